"""The harness without servers: percentiles, rows and tables, the CLI's option routing, the client and the stack's
cleanup (a tiny local HTTP server stands in for the service)."""

from __future__ import annotations

import http.server
import io
import json
import threading
from pathlib import Path

import pytest
from PIL import Image

from bench.__main__ import main as bench_main
from bench.__main__ import split_options
from bench.harness.httpclient import HttpClient, image_info, probe
from bench.harness.measure import Measure, Req, expect_in_body, expect_status, percentile, run_requests
from bench.harness.processes import free_port, start_process
from bench.harness.report import comparison, format_table, load_results, markdown_table, summary_table
from bench.harness.stack import Stack


def test_percentile_interpolates_between_closest_ranks_like_numpy():
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([10, 20, 30, 40, 50], 0.95) == pytest.approx(48.0)
    assert percentile([7], 0.95) == 7


def test_comparison_rows_give_the_ratio_only_when_both_sides_were_measured():
    assert comparison("x", 30.0, 10.0)["ratio"] == 3.0
    assert comparison("x", 30.0, None)["ratio"] is None
    row = comparison("ingest", 45.0, 150.0, "files/s", "higher")
    assert (row["unit"], row["better"], row["ratio"]) == ("files/s", "higher", 0.3)
    text = format_table([row, comparison("floor", None, 1.0)])
    assert "ingest" in text and "n/a" in text


def test_results_become_one_table_and_markdown(tmp_path):
    (tmp_path / "http.json").write_text(json.dumps({"generated_at": "T", "machine": {"nproc": 2, "cpus_usable": 2, "cpu_model": "cpu",
                                                    "platform": "p", "python": "3.11", "git": {"commit": "abc"}},
                                                    "rows": [comparison("tag | lookup p50", 8.0, 2.0)]}))  # fmt: skip
    rows, machine, measured = load_results(["http", "render"], tmp_path)
    assert [r["bench"] for r in rows] == ["http"] and measured == {"http": "T"}
    assert "tag | lookup p50" in summary_table(rows)
    md = markdown_table(rows, machine, measured)
    assert "| http | tag \\| lookup p50 | 8.00 | 2.00 | 4.00 | ms |" in md and "repo abc" in md


def test_report_markdown_prints_the_last_results(tmp_path, capsys):
    (tmp_path / "load.json").write_text(json.dumps({"rows": [{"row": "load 5xx responses", "service": 0, "orthanc": None, "ratio": None, "unit": ""}]}))
    assert bench_main(["report", "--markdown", "--results", str(tmp_path)]) == 0
    assert "| load | load 5xx responses | 0 | — | — |  |" in capsys.readouterr().out


def test_an_option_goes_to_every_named_scenario_that_has_it(tmp_path):
    parsed = split_options(["http", "render"], ["--n", "20", "--n-cr", "2", "--clients=3"], tmp_path)
    assert (parsed["http"].n, parsed["http"].clients) == (20, 3)
    assert (parsed["render"].n, parsed["render"].n_cr, parsed["render"].clients) == (20, 2, 3)
    assert parsed["render"].json == tmp_path / "render.json"
    assert split_options(["render"], [], tmp_path)["render"].n_cr == 5  # what `run` uses unless told otherwise
    with pytest.raises(SystemExit, match="--nope"):
        split_options(["http"], ["--nope", "1"], tmp_path)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # the stdlib's name for it
        body = b"hello Smith^John" if self.path == "/ok" else b"no"
        self.send_response(200 if self.path == "/ok" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_run_requests_times_good_answers_and_counts_bad_ones(server):
    reqs = [Req("GET", "/ok", check=expect_in_body("Smith^John"))] * 6 + [Req("GET", "/missing")] + [Req("GET", "/ok", check=expect_status(201))]
    m = run_requests(Measure("t", "local"), lambda: HttpClient(server), reqs, clients=3)
    assert len(m.latencies_ms) == 6 and len(m.errors) == 2
    assert m.statuses == {"200": 7, "404": 1} and m.rate and m.p(0.5) > 0
    assert m.sample["text"] == "hello Smith^John"
    assert probe(lambda: HttpClient(server), "/missing")[0] == 404


def test_image_info_reads_png_and_jpeg_sizes():
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.new("L", (31, 17)).save(buf, fmt)
        info = image_info(buf.getvalue())
        assert (info["format"], info["width"], info["height"]) == (fmt.lower(), 31, 17)


def test_the_stack_stops_its_processes_and_removes_its_temp_dir():
    with Stack("selftest") as stack:
        tmp = stack.tmp
        proc = start_process("sleeper", ["sleep", "60"], tmp / "sleeper.log")
        stack.procs.append(proc)
        stack._exit.callback(proc.stop)
        (tmp / "file").write_text("x")
    assert not proc.alive()
    assert not Path(tmp).exists()


def test_the_cluster_scenario_is_long_and_takes_its_options(tmp_path):
    from bench.scenarios import SCENARIOS

    assert SCENARIOS["cluster"].group == "long"
    parsed = split_options(["cluster"], [], tmp_path)["cluster"]
    assert (parsed.seconds, parsed.clients, parsed.servers, parsed.workers) == (120, 8, 2, 2)
    assert parsed.redis == "redis://127.0.0.1:6379/11" and parsed.json == tmp_path / "cluster.json"
    parsed = split_options(["cluster"], ["--seconds", "30", "--clients=4", "--no-hash"], tmp_path)["cluster"]
    assert (parsed.seconds, parsed.clients, parsed.no_hash) == (30, 4, True)
