"""Models kept in object storage (``--artifacts s3://bucket/prefix``), on an S3 API server this test
starts (moto's), with the trials in PostgreSQL: what a cluster without a shared folder runs."""

from __future__ import annotations

import json
import socket

import pytest
from conftest import TINY

import tuner
from tuner.cli import main

moto_server = pytest.importorskip("moto.server", reason="the test extra's moto[server]")


@pytest.fixture
def s3_bucket(monkeypatch, tmp_path):
    """An empty bucket on a local S3 server, and boto3 configured for it through the environment
    (which the search's worker processes inherit); yields its client."""
    import boto3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for name, value in {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                        "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_CONFIG_FILE": str(tmp_path / "none"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3")
    client.create_bucket(Bucket="models")
    yield client
    server.stop()


def keys(client, prefix: str) -> list[str]:
    return sorted(item["Key"] for item in client.list_objects_v2(Bucket="models", Prefix=prefix).get("Contents", []))


@pytest.mark.slow
def test_two_workers_keep_exactly_keep_models_in_a_bucket_that_best_and_export_read(
        s3_bucket, postgres_url, unique_name, capsys, tmp_path):
    artifacts = f"s3://models/runs/{unique_name}"
    study = tuner.search("resnet", "digits", trials=4, epochs=1, workers=2, keep=2, artifacts=artifacts,
                         storage=postgres_url, study=unique_name, overrides=TINY["resnet"], pruner="none")
    kept = study.user_attrs["kept_models"]
    assert len(kept) == 2
    assert keys(s3_bucket, f"runs/{unique_name}/") == sorted(f"runs/{unique_name}/{entry[2]}" for entry in kept)
    assert keys(s3_bucket, "") == keys(s3_bucket, f"runs/{unique_name}/")  # nothing outside the prefix

    flags = ["--study", unique_name, "--storage", postgres_url, "--artifacts", artifacts]
    assert main(["best", *flags, "--json"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["model_file"] == f"{artifacts}/{kept[0][2]}" and "--retrain" not in best["export_command"]
    assert main(["export", *flags, "--output", "best.keras"]) == 0
    assert (tmp_path / "best.keras").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.keras"]  # no local artifact folder
    capsys.readouterr()

    s3_bucket.delete_object(Bucket="models", Key=f"runs/{unique_name}/{kept[0][2]}")  # gone from the bucket
    assert main(["best", *flags, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_file"] is None


def test_a_bucket_that_cannot_be_reached_is_one_line_for_best(trained_study, monkeypatch, capsys, tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name, value in {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                        "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1",
                        "AWS_CONFIG_FILE": str(tmp_path / "none"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(name, value)
    assert main(["best", "--study", "d", "--storage", trained_study, "--artifacts", "s3://models/runs"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read the models at s3://models/runs: EndpointConnectionError" in err
