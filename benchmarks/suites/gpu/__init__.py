"""The gpu suite: see benchmarks/suites/__init__.py and the question's prose in benchmarks/questions.yaml."""
