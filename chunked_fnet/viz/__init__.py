"""Looking at predictions: figures (matplotlib), a local HTTP server for stores, and neuroglancer views.

Each module has one job: :mod:`~chunked_fnet.viz.figures` draws the paper's figures from arrays read
out of OME-Zarr images, :mod:`~chunked_fnet.viz.serve` serves store folders to a browser on
127.0.0.1, and :mod:`~chunked_fnet.viz.neuroglancer` builds a neuroglancer state over them.
"""
