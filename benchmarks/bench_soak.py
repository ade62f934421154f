"""Soak: 200 mixed requests against the app on loopback; RSS, open files and cache size over time.

A script, not a test: ``.venv/bin/python benchmarks/bench_soak.py [--requests 200] [--no-trim]``;
``--abuse SECONDS``: mixed abuse instead (below).

The app runs in this process (demo model unless ``--checkpoint``/``--vocab`` are given) and a
``gradio_client`` client sends, in turn: /tag with a small image, /tag with a 12 Mpx JPEG,
/tag with a 9 Mpx RGBA PNG, /pca, /heatmap, /similarity and /tag_batch with a zip of eight
images. Every ``--every`` requests it records the process's resident memory, its open file
descriptors and the bytes in Gradio's cache and the batch output folder. ``--no-trim`` turns
off the memory release after requests (``tagger.engine.cpu.MEMORY``), to compare.

``--abuse SECONDS`` runs the app in a child process with a cache folder of its own and, for
that long, rounds of: an upload cut off half-way (the connection closed), an upload refused
part-way at the per-request cap (4 MiB here), a JSON body over its cap, /tag with a refused
URL, and MCP ``tag`` calls with a ``data:`` image (a good one, an ICO that embeds a 48 Mpx
PNG, one that is not an image). It prints the child's RSS and the cache folder (files, bytes)
every 30 s; everything refused or cut off must leave nothing. The baseline is taken after
``--warmup`` seconds of rounds (first calls, imports, caches), raw and after gc +
``malloc_trim(0)``; the run is flat when the trimmed RSS at the end is within ``--tolerance``
MiB of it. Past the warm-up every row also gives the RSS after a trim: the slope (a plateau
or steady growth). ``--trace``: tracemalloc in the server from that baseline on, and at the
end the 20 largest live allocations made since, by traceback (Python objects vs native memory).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

MiB = 2**20


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def folder_mib(*folders: Path) -> float:
    total = 0
    for folder in folders:
        for dirpath, _, names in os.walk(folder):
            for name in names:
                with contextlib.suppress(OSError):  # removed meanwhile
                    total += os.path.getsize(os.path.join(dirpath, name))
    return total / MiB


def inputs(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    photo = Image.open(ROOT / "examples" / "astronaut.jpg").convert("RGB")
    files = {
        "small": folder / "small.png",
        "photo": folder / "photo.jpg",
        "rgba": folder / "rgba.png",
        "zip": folder / "eight.zip",
    }
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(files["small"])
    photo.resize((4000, 3000), Image.Resampling.BICUBIC).filter(ImageFilter.DETAIL).save(files["photo"], quality=85)
    alpha = Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8)).resize((3000, 3000))
    rgba = photo.resize((3000, 3000))
    rgba.putalpha(alpha)
    rgba.save(files["rgba"], compress_level=1)
    with zipfile.ZipFile(files["zip"], "w") as archive:
        for i in range(8):
            buffer = io.BytesIO()
            photo.rotate(i * 40).resize((1200, 1200)).save(buffer, "JPEG", quality=90)
            archive.writestr(f"set/{i}.jpg", buffer.getvalue())
    return files


_CHILD = """
import collections, ctypes, gc, os, signal, sys, tracemalloc
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
TRACE = os.environ.get("SOAK_TRACE")  # where the report goes; tracing from the first SIGUSR1 when set
COUNTS = os.environ.get("SOAK_COUNTS")  # live objects by type, one file per SIGUSR1 when set
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]
def allocator_stats():  # glibc (all arenas) and pymalloc: native memory that gc does not see
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    stats = {"glibc heap bytes": info.arena, "glibc bytes in use": info.uordblks, "glibc free bytes": info.fordblks,
             "glibc mmapped bytes": info.hblkhd, "pymalloc blocks": sys.getallocatedblocks(),
             "threads": len(os.listdir("/proc/self/task"))}
    with open("/proc/self/smaps") as smaps:  # resident bytes by kind of mapping
        kind = None
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header
                start, end = (int(x, 16) for x in fields[0].split("-"))
                name = fields[5] if len(fields) > 5 else ""
                if name.startswith("["):
                    kind = name
                elif name:
                    kind = "files"
                elif end - start == 64 * 2**20:  # glibc's thread heaps
                    kind = "anonymous 64 MiB"
                elif 8 * 2**20 - 2**16 <= end - start <= 8 * 2**20:  # thread stacks (less the guard page)
                    kind = "anonymous 8 MiB"
                elif end - start == 2**18:  # pymalloc arenas
                    kind = "anonymous 256 KiB"
                else:  # large blocks, other libraries' own mappings
                    kind = "anonymous other"
            elif fields[0] == "Rss:":
                key = "RSS " + kind
                stats[key] = stats.get(key, 0) + int(fields[1]) * 1024
    import tempfile
    with tempfile.TemporaryFile("w+") as out:  # _debugmallocstats writes to the C stderr
        saved = os.dup(2); os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2); os.close(saved)
        out.seek(0)
        for line in out:
            if line.startswith("# arenas allocated current") or line.startswith("# bytes in allocated blocks"):
                key, value = line[2:].rsplit("=", 1)
                stats["pymalloc " + key.strip()] = int(value.strip().replace(",", ""))
    return stats
CONTAINERS = (dict, list, set, collections.deque)
def owner(obj, seen):  # where a container hangs: module.name, Class.attribute or a key in a dict
    for ref in gc.get_referrers(obj):
        if isinstance(ref, dict) and ref is not seen:
            key = next((k for k, v in ref.items() if v is obj), None)
            for name, module in list(sys.modules.items()):
                if getattr(module, "__dict__", None) is ref:
                    return f"{name}.{key}"
            for holder in gc.get_referrers(ref):
                if getattr(holder, "__dict__", None) is ref:
                    return f"{type(holder).__module__}.{type(holder).__qualname__}.{key}"
            return f"a dict's [{key!r}]"
        attribute = next((k for k, v in getattr(ref, "__dict__", {}).items() if v is obj), None)
        if attribute is not None:  # an instance whose attributes live in the object itself
            return f"{type(ref).__module__}.{type(ref).__qualname__}.{attribute}"
    return "?"
def trim(*_):  # SIGUSR1: what the allocator keeps once everything unused is given back
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    if COUNTS:
        counts = {}
        for obj in gc.get_objects():
            name = repr(type(obj))  # a class whose __module__ is a descriptor breaks the attribute route
            counts[name] = counts.get(name, 0) + 1
        counts.update({"@" + k: v for k, v in allocator_stats().items()})
        trim.dumps = getattr(trim, "dumps", 0) + 1
        containers = {}
        mine = (id(containers), id(getattr(trim, "sizes", None)))
        for o in gc.get_objects():  # and what they hold directly: a dict of str or int is not tracked by gc
            for c in (o, *gc.get_referents(o)):
                if isinstance(c, CONTAINERS) and len(c) >= 20 and id(c) not in mine:
                    containers[id(c)] = c
        if trim.dumps == 1:  # the warm-up trim: the sizes later ones are compared with
            trim.sizes = {key: len(o) for key, o in containers.items()}
        else:  # a container that keeps growing holds what the type counts cannot show (str, int, bytes)
            grew = sorted(((len(o) - trim.sizes.get(key, 0), key) for key, o in containers.items()), reverse=True)
            with open(f"{COUNTS}-grew", "w") as out:
                for delta, key in grew[:8]:
                    if delta >= 20:
                        o = containers[key]
                        ordered = isinstance(o, (dict, list, collections.deque))
                        last = repr(next(reversed(o)) if ordered else next(iter(o)))
                        where = owner(o, containers)
                        out.write(f"  +{delta} {type(o).__name__} of {len(o)} at {where}; last: {last[:100]}\\n")
        del containers
        with open(f"{COUNTS}.{trim.dumps}", "w") as out:
            out.write("\\n".join(f"{n}\\t{k}" for k, n in counts.items()))
    if TRACE and not tracemalloc.is_tracing():  # after warm-up: trace what is allocated from now on
        tracemalloc.start(12)
    elif TRACE:  # the end: what was allocated since and is still alive
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        stats = snapshot.statistics("traceback")
        with open(TRACE, "w") as out:
            alive, blocks = sum(s.size for s in stats), sum(s.count for s in stats)
            out.write(f"allocated after warm-up, alive at the end: {alive / 2**20:.2f} MiB in {blocks} blocks\\n")
            for stat in stats[:20]:
                out.write(f"\\n{stat.size / 1024:.1f} KiB, {stat.count} blocks\\n")
                out.write("\\n".join(stat.traceback.format(limit=6)) + "\\n")
    print("TRIMMED", flush=True)
signal.signal(signal.SIGUSR1, trim)
from app_server import start_app
from tagger.web.fairshare import FairShareLimits
app = start_app(["--demo"], limits=FairShareLimits(max_upload_request_bytes=4 * 2**20, upload_bytes_per_client=2**40))
print("URL", app.url, flush=True)
sys.stdin.read()  # until the parent closes it
app.close()
"""


def proc_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB


def proc_threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def folder_files(folder: Path) -> tuple[int, float]:
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".tagger")]
    return len(files), sum(p.stat().st_size for p in files if p.exists()) / MiB


def assert_equal(got: object, expected: object) -> None:
    assert got == expected, (got, expected)


def print_count_growth(prefix: str, rounds: int) -> None:
    """Live objects by type at the warm-up trim (dump 1) against the last trim: the types that grew."""

    def read(path: Path) -> dict[str, int]:
        return {k: int(n) for n, k in (line.split("\t") for line in path.read_text().splitlines())}

    dumps = sorted(Path(prefix).parent.glob(Path(prefix).name + ".*"), key=lambda p: int(p.suffix[1:]))
    first, last = read(dumps[0]), read(dumps[-1])
    allocator = sorted(k for k in first if k.startswith("@"))  # not types: the allocator's own figures
    types = [k for k in last | first if not k.startswith("@")]
    grown = sorted(((last.get(k, 0) - first.get(k, 0), k) for k in types), reverse=True)
    total = [sum(counts.get(k, 0) for k in types) for counts in (first, last)]
    print(f"\nlive objects by type (gc), warm-up trim -> end, {rounds} rounds: total {total[0]} -> {total[1]}")
    for delta, name in grown[:15]:
        if delta > 0:
            print(f"  {delta:+d} {name} ({first.get(name, 0)} -> {last.get(name, 0)})")
    print("allocator, warm-up trim -> end:")
    for name in allocator:
        print(f"  {name[1:]}: {first[name]:,} -> {last.get(name, 0):,} ({last.get(name, 0) - first[name]:+,})")
    grew = Path(prefix + "-grew")
    if grew.exists():
        print("containers that grew (20 items or more), warm-up trim -> end:")
        print(grew.read_text().rstrip() or "  none")


def abuse(seconds: float, warmup: float, tolerance: float, tracing: bool, only: str | None, counting: bool) -> None:
    import asyncio
    import base64
    import signal
    import socket
    import struct
    import subprocess

    import httpx
    from gradio_client import Client, handle_file
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    cache = Path(tempfile.mkdtemp(prefix="soak-cache-"))
    log = tempfile.NamedTemporaryFile(prefix="soak-log-", suffix=".txt", delete=False)  # noqa: SIM115
    trace = log.name + ".trace" if tracing else None
    counts = log.name + ".counts" if counting else None
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(ROOT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={
            **os.environ,
            "GRADIO_TEMP_DIR": str(cache),
            **({"SOAK_TRACE": trace} if trace else {}),
            **({"SOAK_COUNTS": counts} if counts else {}),
        },
    )
    assert child.stdout is not None and child.stdin is not None
    url = next(line.split()[1] for line in child.stdout if line.startswith("URL "))
    host, port = httpx.URL(url).host, httpx.URL(url).port
    client = Client(url, verbose=False)

    def data_url(data: bytes, mime: str) -> str:
        return f"data:{mime};base64," + base64.b64encode(data).decode()

    photo = io.BytesIO()
    Image.open(ROOT / "examples" / "cat.jpg").save(photo, "JPEG")
    big = io.BytesIO()
    Image.new("L", (8000, 6000)).save(big, "PNG", compress_level=9)
    stream = big.getvalue()
    ico = b"\x00\x00\x01\x00\x01\x00" + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(stream), 22) + stream
    images = [
        data_url(photo.getvalue(), "image/jpeg"),
        data_url(ico, "image/x-icon"),
        data_url(b"no image", "image/png"),
    ]

    def multipart(size: int) -> bytes:
        head = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
        return head + b"x" * size + b"\r\n--b--\r\n"

    def cut_off_upload() -> None:
        body = multipart(2 * MiB)
        with socket.create_connection((host, port)) as sock:
            sock.sendall(
                f"POST /gradio_api/upload HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; "
                f"boundary=b\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body[: len(body) // 2]
            )
            time.sleep(0.2)

    def refused_requests() -> list[int]:
        body = multipart(5 * MiB)
        with httpx.Client(base_url=url, timeout=60) as http:
            chunks = iter([body[i : i + 2**16] for i in range(0, len(body), 2**16)])
            over_cap = http.post(
                "gradio_api/upload", content=chunks, headers={"Content-Type": "multipart/form-data; boundary=b"}
            )
            json_body = http.post("gradio_api/call/tag", content=b"[" + b" " * (2 * MiB) + b"]")
        return [over_cap.status_code, json_body.status_code]

    def refused_url() -> None:
        with contextlib.suppress(Exception):
            client.predict(handle_file(url + "gradio_api/file=examples/cat.jpg"), api_name="/tag")

    async def mcp_calls() -> list[bool]:
        async with (
            streamable_http_client(url + "gradio_api/mcp/") as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return [(await session.call_tool("tag", {"image": image})).isError for image in images]

    kinds = {
        "cutoff": cut_off_upload,
        "refused": lambda: assert_equal(refused_requests(), [413, 413]),
        "url": refused_url,
        "mcp": lambda: assert_equal(asyncio.run(mcp_calls()), [False, True, True]),
    }

    def one_round() -> None:
        for kind, call in kinds.items():
            if only in (None, kind):
                call()

    def trimmed_rss() -> float:
        child.send_signal(signal.SIGUSR1)
        while child.stdout.readline().strip() != "TRIMMED":
            pass
        time.sleep(1)
        return proc_rss_mib(child.pid)

    one_round()  # the first call: imports, the MCP client
    time.sleep(1)
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; warm-up {warmup:.0f} s, then abuse "
        f"for {seconds:.0f} s{'; tracemalloc on' if trace else ''}\n"
    )
    print("| seconds | rounds | server RSS MiB | cache files | cache MiB |\n|---|---|---|---|---|")
    start_rss, (start_files, start_mib) = proc_rss_mib(child.pid), folder_files(cache)
    print(f"| 0 | 0 | {start_rss:.0f} | {start_files} | {start_mib:.2f} |")
    started, rounds, next_row = time.perf_counter(), 0, 30.0
    warm_rss = warm_trimmed = peak = 0.0
    while (elapsed := time.perf_counter() - started) < warmup + seconds:
        if not warm_trimmed and elapsed >= warmup:
            time.sleep(2)  # the server notices the last cut-off upload
            warm_rss, warm_trimmed, warm_rounds = proc_rss_mib(child.pid), trimmed_rss(), rounds
            warm_threads = proc_threads(child.pid)
            print(f"| {elapsed:.0f} | {rounds} | {warm_rss:.0f} (warmed up; {warm_trimmed:.0f} after trim) | | |")
        one_round()
        rounds += 1
        peak = max(peak, proc_rss_mib(child.pid))
        if elapsed >= next_row:
            next_row += 30
            rss = proc_rss_mib(child.pid)
            after = f" ({trimmed_rss():.0f} after trim)" if warm_trimmed else ""  # the slope, past the warm-up
            print(f"| {elapsed:.0f} | {rounds} | {rss:.0f}{after} | " + "{} | {:.2f} |".format(*folder_files(cache)))
    time.sleep(2)  # the server notices the last cut-off upload
    end_rss, (end_files, end_mib) = proc_rss_mib(child.pid), folder_files(cache)
    print(f"| {time.perf_counter() - started:.0f} | {rounds} | {end_rss:.0f} | {end_files} | {end_mib:.2f} |")
    end_trimmed = trimmed_rss()
    lines = Path(log.name).read_text(errors="replace").splitlines()
    ours = [line for line in lines if " tagger: " in line]
    flat = end_trimmed - warm_trimmed <= tolerance
    print(
        f"\nserver RSS: start {start_rss:.0f} MiB, after warm-up {warm_rss:.0f} ({warm_trimmed:.0f} after gc + "
        f"malloc_trim(0)), end {end_rss:.0f} ({end_trimmed:.0f} after gc + malloc_trim(0)), highest seen {peak:.0f}; "
        f"{'FLAT' if flat else 'NOT FLAT'}: {end_trimmed - warm_trimmed:+.0f} MiB after trim over "
        f"{rounds - warm_rounds} rounds past the warm-up (tolerance {tolerance:.0f} MiB); server threads "
        f"{warm_threads} after warm-up, {proc_threads(child.pid)} at the end\n"
        f"cache {start_files} files {start_mib:.2f} MiB -> {end_files} files {end_mib:.2f} MiB; "
        f"{rounds} rounds of {only or 'all'} abuse; the app logged {len(ours)} lines ({len(ours) / (rounds + 1):.1f} a "
        f"round), {sum('Traceback' in line for line in lines)} tracebacks"
    )
    if counts:
        print_count_growth(counts, rounds - warm_rounds)
    if trace:
        print("\ntracemalloc in the server, from the warm-up trim to the end (after gc), top 20 by traceback:\n")
        print(Path(trace).read_text())
    client.close()
    child.stdin.close()
    child.wait(timeout=60)
    os.unlink(log.name)
    if trace:
        os.unlink(trace)
    for dump in Path(log.name).parent.glob(Path(log.name).name + ".counts.*"):
        dump.unlink()
    shutil.rmtree(cache, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--abuse", type=float, metavar="SECONDS", help="mixed abuse for this long instead")
    parser.add_argument("--warmup", type=float, default=30, metavar="SECONDS", help="abuse before the baseline")
    parser.add_argument("--tolerance", type=float, default=5, metavar="MIB", help="growth after trim still flat")
    parser.add_argument("--trace", action="store_true", help="tracemalloc in the server: what grew after warm-up")
    parser.add_argument("--only", choices=["cutoff", "refused", "url", "mcp"], help="one kind of abuse only")
    parser.add_argument("--counts", action="store_true", help="live objects by type in the server: what grew")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--no-trim", action="store_true", help="do not release memory after requests")
    parser.add_argument("--checkpoint")
    parser.add_argument("--vocab")
    args = parser.parse_args()
    if args.abuse:
        abuse(args.abuse, args.warmup, args.tolerance, args.trace, args.only, args.counts)
        return

    import gradio as gr
    from app_server import start_app
    from gradio_client import Client, handle_file

    from tagger.datasets.batch import OUTPUT_ROOT
    from tagger.engine import cpu

    if args.no_trim:
        cpu.MEMORY.release = lambda: None
    argv = ["--demo"] if not args.checkpoint else ["--checkpoint", args.checkpoint, "--vocab", args.vocab]
    app = start_app(argv)
    cache = Path(gr.utils.get_upload_folder())
    folder = Path(tempfile.mkdtemp(prefix="soak-"))
    files = inputs(folder)
    client = Client(app.url, verbose=False)
    pair = (handle_file(str(files["small"])), handle_file(str(files["rgba"])))
    tag = app.context.vocab.tags[0]
    calls = [
        lambda: client.predict(handle_file(str(files["small"])), api_name="/tag"),
        lambda: client.predict(handle_file(str(files["photo"])), api_name="/tag"),
        lambda: client.predict(handle_file(str(files["rgba"])), api_name="/tag"),
        lambda: client.predict(handle_file(str(files["photo"])), api_name="/pca"),
        lambda: client.predict(handle_file(str(files["small"])), tag, api_name="/heatmap"),
        lambda: client.predict(*pair, api_name="/similarity"),
        lambda: client.predict([handle_file(str(files["zip"]))], api_name="/tag_batch"),
    ]
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; memory release "
        f"{'off' if args.no_trim else 'on'}; model: {'demo' if not args.checkpoint else args.checkpoint}\n"
    )
    print("| requests | seconds | RSS MiB | open files | cache MiB |\n|---|---|---|---|---|")
    started = time.perf_counter()
    rows = [(0, 0.0, rss_mib(), open_files(), folder_mib(cache, OUTPUT_ROOT))]
    print("| {} | {:.0f} | {:.0f} | {} | {:.1f} |".format(*rows[0]))
    peak = rows[0][2]
    for n in range(1, args.requests + 1):
        calls[(n - 1) % len(calls)]()
        peak = max(peak, rss_mib())
        if n % args.every == 0:
            rows.append((n, time.perf_counter() - started, rss_mib(), open_files(), folder_mib(cache, OUTPUT_ROOT)))
            print("| {} | {:.0f} | {:.0f} | {} | {:.1f} |".format(*rows[-1]))
    first, last = rows[0], rows[-1]
    print(
        f"\nRSS {first[2]:.0f} -> {last[2]:.0f} MiB (highest seen between requests {peak:.0f} MiB), "
        f"open files {first[3]} -> {last[3]}, cache {first[4]:.1f} -> {last[4]:.1f} MiB "
        f"({args.requests} requests in {last[1]:.0f} s)"
    )
    client.close()
    app.close()


if __name__ == "__main__":
    main()
