"""Input URIs (issue #24): the policy of cxatlas/core/uris.py at ingest and again before annotate opens a file.

One manifest holds every hostile uri of the issue next to a real video: the hostile rows are quarantined with their
reasons, no network request is made (a local HTTP server counts requests), the real video is annotated, and the
counts reconcile."""
from __future__ import annotations

import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest

from cxatlas.core.schemas import QUARANTINE, UPLOADS, VIDEO_EXPRESSIONS
from cxatlas.core.uris import UriPolicy
from cxatlas.sim.media_corpus import source_paths
from cxatlas.stages.annotate import run_annotate
from cxatlas.stages.ingest import run_ingest
from cxatlas.warehouse.tables import TableStore
from tests.conftest import make_config
from tests.stages.test_ingest import PARIS, write_csv

FAST = ("annotate.partitions=2", "annotate.video.max_windows=1", "annotate.videos_per_batch=4")
DEFAULT = UriPolicy(("file", "s3a", "gs", "abfss", "hdfs"))


@pytest.mark.parametrize("uri, reason", [
    ("/etc/passwd", None),                                  # a regular file: allowed by default roots, not a video
    ("../../../../etc/shadow", "uri_not_absolute"),
    ("/proc/self/environ", "uri_system_path"),
    ("/dev/zero", "uri_system_path"),
    ("file:///dev/../dev/zero", "uri_system_path"),
    ("/srv/../proc/1/mem", "uri_system_path"),
    ("http://169.254.169.254/latest/meta-data/", "uri_scheme_refused"),
    ("HTTPS://example.org/v.mp4", "uri_scheme_refused"),
    ("ftp://example.org/v.mp4", "uri_scheme_refused"),
    ("", "missing_uri"), ("   ", "missing_uri"), (None, "missing_uri"),
    ("s3a://bucket/videos/a.mp4", None),
    ("/srv/uploads/a.mp4", None),
])
def test_policy_defaults(uri, reason):
    refusal = DEFAULT.refusal(uri)
    assert (refusal[0] if refusal else None) == reason, refusal


def test_policy_roots_and_opt_in():
    rooted = UriPolicy(("file", "s3a", "https"), ("/srv/uploads", "s3a://bucket/videos"))
    assert rooted.refusal("/srv/uploads/a/b.mp4") is None
    assert rooted.refusal("s3a://bucket/videos/x.mp4") is None
    assert rooted.refusal("https://example.org/v.mp4")[0] == "uri_outside_roots"  # opted in, but no root holds it
    for outside in ("/srv/uploads/../secrets/a.mp4", "/srv/uploads2/a.mp4", "/etc/passwd",
                    "s3a://other/videos/x.mp4", "s3a://bucket/videos/../private/x.mp4"):
        assert rooted.refusal(outside)[0] == "uri_outside_roots", outside


def test_batch_refusals_equal_row_by_row():
    """Ingest asks :meth:`UriPolicy.refusals` for a whole batch, with a fast path for plain local paths; every
    answer must be :meth:`UriPolicy.refusal`'s, for uris on either side of the fast path and for policies that do
    and do not allow local files anywhere."""
    uris = ["/", "/videos/1.mp4", "/videos/1.mp4/", "/proc", "/proc/", "/procfs/a.mp4", "/proc/self/environ", "/dev",
            "/dev/", "/devices/a.mp4", "/sys/x", "/system/a.mp4", "/a//b.mp4", "//host/a.mp4", "/a/./b.mp4",
            "/a/../dev/zero", "/a/.hidden.mp4", "/a/b..mp4", "/a/..", "/a/.", " /a.mp4", "/a.mp4 ", "/a.mp4\n",
            "/\u00e4.mp4", "/a b.mp4", "/a:b.mp4", "/a%20b,c=d@e~f+g.mp4", "/srv/uploads/a.mp4", "relative.mp4",
            "file:/a.mp4", "file:///dev/zero", "FILE:///srv/uploads/a.mp4", "s3a://bucket/videos/a.mp4",
            "http://169.254.169.254/", "", "   ", None, float("nan")]
    for policy in (DEFAULT, UriPolicy(("FILE",)), UriPolicy(("s3a",)),
                   UriPolicy(("file", "s3a"), ("/srv/uploads", "s3a://bucket/videos"))):
        expected = [policy.refusal(None if u is None or u != u else u) for u in uris]
        assert policy.refusals(uris) == expected, policy


class _Counting(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        _Counting.requests.append(self.path)
        self.send_response(404)
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_hostile_manifest_quarantined_real_video_annotated(spark, tmp_path, http_server):
    video = Path(shutil.copy(source_paths()["single_face"], tmp_path / "clip.mp4"))
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)  # opened as a stream it would block the worker forever
    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "zero.mp4").symlink_to("/dev/zero")  # a link under an allowed folder to a device
    hostile = {"passwd": "/etc/passwd", "shadow": "../../../../etc/shadow", "environ": "/proc/self/environ",
               "zero": "/dev/zero", "metadata": "http://169.254.169.254/latest/meta-data/",
               "local_http": f"{http_server}/clip.mp4", "empty": ""}
    at_annotate = {"fifo": str(fifo), "folder": str(tmp_path / "folder.mp4"), "zero_link": str(tmp_path / "zero.mp4")}
    rows = [dict(PARIS, video_id="real", uri=str(video)), dict(PARIS, video_id="real_again", uri=str(video))]
    rows += [dict(PARIS, video_id=vid, uri=uri) for vid, uri in {**hostile, **at_annotate}.items()]
    manifest = write_csv(tmp_path / "m.csv", rows)

    cfg = make_config(tmp_path / "data", *FAST, "ingest.shared_uri=quarantine")
    store = TableStore.from_config(spark, cfg)
    ingest = run_ingest(spark, cfg, store, manifest)
    assert ingest.reconciles and ingest.rows_in == len(rows)
    assert ingest.reasons == {"uri_not_absolute": 1, "uri_system_path": 2, "uri_scheme_refused": 2,
                              "missing_uri": 1, "shared_uri": 1}, ingest.reasons
    q = store.table(QUARANTINE).read().toPandas().set_index("video_id")
    assert q.loc["metadata", "reason"] == "uri_scheme_refused" and "'http'" in q.loc["metadata", "detail"]
    assert q.loc["empty", "reason"] == "missing_uri" and q.loc["shadow", "reason"] == "uri_not_absolute"
    assert q.loc["real_again", "reason"] == "shared_uri" and "video_id real " in q.loc["real_again", "detail"]
    stored = store.table(UPLOADS).read().toPandas()
    assert sorted(stored.video_id) == sorted(["real", "passwd", *at_annotate])
    assert stored.uri.notna().all()  # no live row without a uri

    report = run_annotate(spark, cfg, store)
    assert report.reconciles and report.considered == 5, report.summary()
    assert report.reasons == {"not_a_video": 1, "not_a_regular_file": 2, "uri_system_path": 1}, report.reasons
    assert store.table(VIDEO_EXPRESSIONS).read().toPandas().video_id.tolist() == ["real"]
    assert _Counting.requests == []  # nothing fetched, ever

    # A row stored under a looser policy (http opted in) is refused again before annotate opens it.
    loose = make_config(tmp_path / "data2", *FAST, "ingest.allowed_schemes=[file,http]")
    store2 = TableStore.from_config(spark, loose)
    assert run_ingest(spark, loose, store2, write_csv(tmp_path / "h.csv", [
        dict(PARIS, video_id="local_http", uri=f"{http_server}/clip.mp4")])).new == 1
    strict = make_config(tmp_path / "data2", *FAST)
    again = run_annotate(spark, strict, store2)
    assert again.reasons == {"uri_scheme_refused": 1} and again.reconciles
    assert _Counting.requests == []


def test_shared_uri_warns_by_default(spark, tmp_path):
    cfg = make_config(tmp_path / "data")
    store = TableStore.from_config(spark, cfg)
    first = run_ingest(spark, cfg, store, write_csv(tmp_path / "a.csv", [dict(PARIS, video_id="a")]))
    assert first.new == 1 and first.shared_uri_rows == 0
    report = run_ingest(spark, cfg, store, write_csv(tmp_path / "b.csv", [dict(PARIS, video_id=f"b{i}")
                                                                          for i in range(3)]))
    assert report.new == 3 and report.shared_uri_rows == 3 and report.reconciles
    assert "warning: shared uri: 3" in report.summary()
