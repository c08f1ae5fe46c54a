"""Runs a Recorder over an MP4 file the way a camera source does, for tests that need a process.

    python tests/recorder_run.py SOURCE SPOOL [--speed X] [--passes N] [--slice S] [--fsize BYTES]

Packets are paced at ``--speed`` × real time (0 = as fast as possible); the file is read ``--passes``
times, seeking back as a looping file source does. After every video keyframe it prints
``{"keyframe": <media seconds since the start>}`` once the packet is written, and at the end
``{"slices": N, "errors": [...]}`` after the spool finished every slice. ``--fsize`` caps the size
of every file this process writes (RLIMIT_FSIZE, with SIGXFSZ ignored): writes past it fail with
EFBIG, a real write error."""

from __future__ import annotations

import argparse
import json
import resource
import signal
import sys
import time
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.agent.recorder import Recorder, SlicePolicy
from relay.agent.spool import Spool


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source", type=Path)
    parser.add_argument("spool", type=Path)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--slice", type=float, default=0.0)
    parser.add_argument("--fsize", type=int, default=0)
    args = parser.parse_args()
    if args.fsize:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize, args.fsize))
    recorder = Recorder(1, Spool(args.spool, 0), SlicePolicy(args.slice, 0))
    errors: list[str] = []
    with av.open(str(args.source)) as container:
        streams = [container.streams.video[0], *container.streams.audio[:1]]
        recorder.open(streams)
        started = time.monotonic()
        length = float(container.duration or 0) / av.time_base
        for number in range(args.passes):
            if number:
                container.seek(0)
            for packet in container.demux(streams):
                if packet.dts is None:
                    continue
                at = number * length + float(packet.dts * packet.time_base)
                if args.speed > 0 and (ahead := at / args.speed - (time.monotonic() - started)) > 0:
                    time.sleep(ahead)
                recorder.packet(packet)
                if recorder.last_error and recorder.last_error not in errors:
                    errors.append(recorder.last_error)
                if packet.stream.type == "video" and packet.is_keyframe:
                    print(json.dumps({"keyframe": at}), flush=True)
    recorder.close("the file ended")
    recorder.join()
    print(json.dumps({"slices": recorder.slices, "errors": errors}), flush=True)


if __name__ == "__main__":
    main()
