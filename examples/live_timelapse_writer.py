"""A microscope's writer, as a separate process: copies a finished time-lapse into a new OME-Zarr one
frame at a time, at an interval, the way acquisition software does; what ``chunked-fnet predict
--follow`` follows (the follow tests and ``benchmarks/run.py latency follow`` run it).

    python examples/live_timelapse_writer.py SOURCE TARGET --mode grow|allocate --version 0.5|0.4 --interval S [--mark-complete]

``grow``: the t axis starts at one frame and is lengthened before each new frame is written;
``allocate``: the t axis is allocated for every frame at the start and filled frame by frame. Each
frame is written channel by channel, chunk by chunk (plain zarr writes). ``--mark-complete`` sets the
image's ``acquisition_complete`` attribute once the last frame is written: how a writer tells a
follower that no frame will come (``group.attrs["acquisition_complete"] = True``, any zarr writer).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import zarr

from chunked_fnet.io.reader import open_level_array
from chunked_fnet.io.writer import create_image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--mode", choices=("grow", "allocate"), required=True)
    parser.add_argument("--version", choices=("0.4", "0.5"), default="0.5")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--mark-complete", action="store_true")
    parser.add_argument("--start-after", type=float, default=0.0, help="seconds to wait before the first frame")
    args = parser.parse_args()

    source, meta, _ = open_level_array(args.source)
    n_t = source.shape[0]
    chunks = source.chunks
    create_image(
        args.target, shape=(1 if args.mode == "grow" else n_t, *source.shape[1:]), chunks=chunks, dtype=source.dtype,
        scale=dict(meta.scales[0]), units=dict(meta.units), channel_names=list(meta.channel_names or []), version=args.version,
    )
    group = zarr.open_group(args.target, mode="r+")
    array = group["0"]
    time.sleep(args.start_after)
    for t in range(n_t):
        if t and args.mode == "grow":
            array.resize((t + 1, *array.shape[1:]))
        frame = np.asarray(source[t])
        for c in range(frame.shape[0]):
            for z in range(0, frame.shape[1], chunks[2]):
                for y in range(0, frame.shape[2], chunks[3]):
                    for x in range(0, frame.shape[3], chunks[4]):
                        array[t, c, z:z + chunks[2], y:y + chunks[3], x:x + chunks[4]] = frame[c, z:z + chunks[2], y:y + chunks[3], x:x + chunks[4]]
        print(f"wrote frame {t}", flush=True)
        if t < n_t - 1:
            time.sleep(args.interval)
    if args.mark_complete:
        group.attrs["acquisition_complete"] = True
        print("marked complete", flush=True)


if __name__ == "__main__":
    main()
