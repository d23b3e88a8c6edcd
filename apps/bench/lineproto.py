"""Line protocol and JSON frame formatting: numba kernels against numpy and plain Python.

`array_lines` (one numba kernel writing every line into a byte buffer) is timed against the
numpy implementation it replaced (`astype(str)` and `np.char.add` chains, kept here as the
baseline) and against a plain f-string loop with `repr`, on the same arrays: samples per
second for each and the ratios. `encode_frame_json` is timed against `json.dumps` of the same
document with the arrays as lists. The outputs are compared too: all three line builders must
give the same bytes, and both JSON encoders the same text.
"""

import argparse
import time
from collections.abc import Callable

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options."""
    parser.add_argument(
        "--samples", type=int, default=1_000_000, help="samples per array_lines call"
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the best one counts")
    parser.add_argument("--frame-samples", type=int, default=1_000, help="samples per JSON frame")
    parser.add_argument("--frames", type=int, default=200, help="JSON frames per timed run")
    parser.add_argument("--seed", type=int, default=7, help="random generator seed")


def _best_s(action: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    return best


def run(args: argparse.Namespace) -> dict[str, object]:
    """Time the three line builders and the two JSON encoders; return the figures."""
    import json  # noqa: PLC0415 - heavy or only needed here; see apps.bench
    from collections.abc import Mapping  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415
    import numpy.typing as npt  # noqa: PLC0415

    from devices.codec import encode_frame_json  # noqa: PLC0415
    from devices.contract import Frame  # noqa: PLC0415
    from osteotel.floatfmt import warm_up  # noqa: PLC0415
    from osteotel.store.lineproto import array_lines, escape_measurement, escape_tag  # noqa: PLC0415

    def numpy_lines(
        measurement: str,
        tags: Mapping[str, str],
        fields: Mapping[str, npt.NDArray[np.float64]],
        ts_ns: npt.NDArray[np.int64],
    ) -> bytes:
        # The implementation array_lines had before the kernels (float fields only).
        parts = [escape_measurement(measurement)]
        parts.extend(f"{escape_tag(key)}={escape_tag(tags[key])}" for key in sorted(tags))
        prefix = (",".join(parts) + " ").encode()
        lines = np.full(ts_ns.shape, prefix, dtype=f"S{len(prefix)}")
        for position, (name, values) in enumerate(fields.items()):
            key = ("," if position else "") + escape_tag(name) + "="
            text = values.astype(np.float64).astype(str).astype(np.bytes_)
            lines = np.char.add(np.char.add(lines, key.encode()), text)
        lines = np.char.add(lines, b" ")
        lines = np.char.add(lines, ts_ns.astype(np.int64).astype(str).astype(np.bytes_))
        lines = np.char.add(lines, b"\n")
        return lines.tobytes().replace(b"\0", b"")

    def fstring_lines(
        force_n: npt.NDArray[np.float64],
        disp_mm: npt.NDArray[np.float64],
        ts_ns: npt.NDArray[np.int64],
    ) -> bytes:
        prefix = "raw,device=P-7F3A,hub=H-01 "
        return "".join(
            f"{prefix}force_n={f!r},disp_mm={d!r} {t}\n"
            for f, d, t in zip(force_n.tolist(), disp_mm.tolist(), ts_ns.tolist(), strict=True)
        ).encode()

    rng = np.random.default_rng(args.seed)
    n = args.samples
    # Sensor-like values: full float64 precision, so every value needs 15 to 17 digits.
    force_n = 150.0 + 40.0 * rng.standard_normal(n)
    disp_mm = np.cumsum(rng.uniform(0.0, 1e-4, n))
    ts_ns = 1_700_000_000_000_000_000 + np.arange(n, dtype=np.int64) * 10_000_000
    tags = {"hub": "H-01", "device": "P-7F3A"}
    fields = {"force_n": force_n, "disp_mm": disp_mm}

    warm_up()
    new = array_lines("raw", tags, fields, ts_ns)
    old = numpy_lines("raw", tags, fields, ts_ns)
    naive = fstring_lines(force_n, disp_mm, ts_ns)
    new_s = _best_s(lambda: array_lines("raw", tags, fields, ts_ns), args.repeat)
    numpy_s = _best_s(lambda: numpy_lines("raw", tags, fields, ts_ns), args.repeat)
    fstring_s = _best_s(lambda: fstring_lines(force_n, disp_mm, ts_ns), args.repeat)

    m = args.frame_samples
    frames = [
        Frame(
            "P-7F3A",
            seq,
            1_700_000_000_000_000_000 + seq * m * 10_000_000,
            100.0,
            150.0 + 40.0 * rng.standard_normal(m),
            np.cumsum(rng.uniform(0.0, 1e-4, m)),
        )
        for seq in range(args.frames)
    ]

    def dumps_frame(frame: Frame) -> bytes:
        # The encoder before the kernels: json.dumps with the arrays as Python lists.
        document = {
            "v": 1,
            "device": frame.device,
            "seq": int(frame.seq),
            "t0_ns": int(frame.t0_ns),
            "rate_hz": float(frame.rate_hz),
            "force_n": frame.force_n.tolist(),
            "disp_mm": frame.disp_mm.tolist(),
        }
        return json.dumps(document, separators=(",", ":")).encode()

    json_identical = all(encode_frame_json(f) == dumps_frame(f) for f in frames)
    json_new_s = _best_s(lambda: [encode_frame_json(f) for f in frames], args.repeat)
    json_dumps_s = _best_s(lambda: [dumps_frame(f) for f in frames], args.repeat)
    json_samples = m * len(frames)

    return {
        "samples": n,
        "float_fields": len(fields),
        "lines_identical": new == old == naive,
        "new_samples_per_s": n / new_s,
        "numpy_samples_per_s": n / numpy_s,
        "fstring_samples_per_s": n / fstring_s,
        "new_vs_numpy": numpy_s / new_s,
        "new_vs_fstring": fstring_s / new_s,
        "new_mb_per_s": len(new) / new_s / 1e6,
        "json_frames": len(frames),
        "json_frame_samples": m,
        "json_identical": json_identical,
        "json_new_samples_per_s": json_samples / json_new_s,
        "json_dumps_samples_per_s": json_samples / json_dumps_s,
        "json_new_vs_dumps": json_dumps_s / json_new_s,
    }
