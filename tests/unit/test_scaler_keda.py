"""The external scaler service over real gRPC, called the way KEDA calls it: GetMetricSpec, then GetMetrics with the
metric name stripped of KEDA's sX- prefix, then IsActive; StreamIsActive for push scaling. The decisions it serves
come from a dictionary here (the e2e test serves live ones)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
import pytest

from services.scaler.externalscaler import externalscaler_pb2 as pb
from services.scaler.externalscaler import externalscaler_pb2_grpc as pb_grpc
from services.scaler.keda import ExternalScaler, start_server
from services.scaler.policy import Decision


def decision(model: str, desired: int) -> Decision:
    return Decision(model, datetime.now(UTC), "reactive", "warm", 1, desired, "test", {})


def ref(model: str | None) -> pb.ScaledObjectRef:
    metadata = {"scalerAddress": "ferry-scaler:9090"} | ({"model": model} if model else {})
    return pb.ScaledObjectRef(name="worker-tiny", namespace="ferry", scalerMetadata=metadata)


@pytest.fixture
async def keda_client():
    decisions: dict[str, Decision | None] = {"tiny": decision("tiny", 3), "idle": decision("idle", 0), "new": None}
    servicer = ExternalScaler(decisions.get, lambda m: m in decisions, target_tokens=4000.0, stream_interval_s=0.05)
    server, port = await start_server(servicer, "127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield pb_grpc.ExternalScalerStub(channel), decisions
    finally:
        await channel.close()
        await server.stop(grace=None)


async def test_metric_spec_and_value_give_hpa_the_policys_replicas(keda_client) -> None:
    stub, _ = keda_client
    spec = await stub.GetMetricSpec(ref("tiny"))
    assert [(s.metricName, s.targetSizeFloat, s.targetSize) for s in spec.metricSpecs] == [
        ("ferry-tokens-tiny", 4000.0, 4000)
    ]
    metrics = await stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref("tiny"), metricName="ferry-tokens-tiny"))
    [value] = metrics.metricValues
    assert (value.metricName, value.metricValueFloat) == ("ferry-tokens-tiny", 12000.0)
    # HPA with an AverageValue target: ceil(12000 / 4000) = the 3 replicas the policy wants
    assert value.metricValueFloat / spec.metricSpecs[0].targetSizeFloat == 3
    assert (await stub.IsActive(ref("tiny"))).result is True


async def test_idle_or_undecided_models_are_inactive_with_a_zero_metric(keda_client) -> None:
    stub, _ = keda_client
    for model in ("idle", "new"):
        assert (await stub.IsActive(ref(model))).result is False
        metrics = await stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref(model), metricName=""))
        assert metrics.metricValues[0].metricValueFloat == 0


async def test_stream_is_active_pushes_changes(keda_client) -> None:
    stub, decisions = keda_client
    stream = stub.StreamIsActive(ref("idle"))
    assert (await asyncio.wait_for(stream.read(), 5)).result is False
    decisions["idle"] = decision("idle", 1)
    assert (await asyncio.wait_for(stream.read(), 5)).result is True
    stream.cancel()
    spec_stream = stub.StreamMetricSpec(ref("tiny"))
    first = await asyncio.wait_for(spec_stream.read(), 5)
    assert first.metricSpecs[0].metricName == "ferry-tokens-tiny"
    spec_stream.cancel()


async def test_bad_trigger_metadata_gets_clear_grpc_errors(keda_client) -> None:
    stub, _ = keda_client
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetMetricSpec(ref(None))
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model" in missing.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stub.IsActive(ref("no-such-model"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as wrong_metric:
        await stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref("tiny"), metricName="other"))
    assert wrong_metric.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_scaledobject_manifest_points_keda_at_this_service() -> None:
    import yaml

    from services.scaler.config import ScalerSettings
    from shared.registry import read_seed
    from tests.e2e.platform import ROOT

    documents = list(yaml.safe_load_all((ROOT / "infra" / "k8s" / "scaler.yaml").read_text()))
    [scaled_object] = [d for d in documents if d["kind"] == "ScaledObject"]
    [trigger] = scaled_object["spec"]["triggers"]
    defaults = ScalerSettings()
    assert trigger["type"] in ("external", "external-push")
    assert trigger["metricType"] == "AverageValue"  # ceil(value / target) is then the policy's replicas
    assert trigger["metadata"]["scalerAddress"].endswith(f":{defaults.grpc_port}")
    assert trigger["metadata"]["model"] in {m.id for m in read_seed()}
    assert scaled_object["spec"]["maxReplicaCount"] == defaults.max_replicas
    [deployment] = [d for d in documents if d["kind"] == "Deployment"]
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FERRY_SCALER_SUPERVISE"] == "false"
