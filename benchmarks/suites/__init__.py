"""The benchmark suites, one per question (benchmarks/questions.yaml), each measurement a subcommand of
``python benchmarks/run.py SUITE MEASUREMENT [options]``. Each measurement stores a JSON result through
``harness.results`` (BENCHMARKS.md regenerated from them) unless ``--no-save``, and calls the package's
public API only (tests/test_benchmarks_report.py)."""

#: suite -> measurement -> module (with ``main(argv)``).
SUITES: dict[str, dict[str, str]] = {
    "throughput": {
        "pipeline-efficiency": "suites.throughput.pipeline_efficiency",
        "peers": "suites.throughput.vs_peers",
        "scaling": "suites.throughput.scaling",
        "many-chunks": "suites.throughput.many_chunks",
        "ensemble": "suites.throughput.ensemble",
        "defaults": "suites.throughput.defaults",
        "host-side": "suites.throughput.host_side",
        "skip-empty": "suites.throughput.skip_empty",
        "layout": "suites.throughput.layout",
    },
    "memory": {
        "vs-size": "suites.memory.memory_vs_size",
        "predict": "suites.memory.predict_memory",
        "synth": "suites.memory.synth_memory",
        "allocator": "suites.memory.allocator",
    },
    "seams": {
        "border-effect": "suites.seams.border_effect",
        "vs-overlap": "suites.seams.seams_vs_overlap",
        "metrics": "suites.seams.seams",
        "bf16-accuracy": "suites.seams.bf16_accuracy",
        "precision-check": "suites.seams.precision_check",
    },
    "reliability": {"worker-kill": "suites.reliability.worker_kill_stress"},
    "storage": {
        "object-store": "suites.storage.object_store",
        "shards": "suites.storage.shards",
        "read-amplification": "suites.storage.read_amplification",
        "codecs": "suites.storage.codecs",
    },
    "latency": {"follow": "suites.latency.follow_latency"},
    "training": {
        "speed": "suites.training.speed",
        "bf16-curve": "suites.training.bf16_curve",
        "multi": "suites.training.multi",
        "heldout": "suites.training.heldout",
        "real-morphology": "suites.training.real_morphology",
    },
    "gpu": {
        "device-path": "suites.gpu.device_path",
        "block-profile": "suites.gpu.block_profile",
    },
}
