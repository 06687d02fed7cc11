"""KEDA's external scaler gRPC service (externalscaler.proto from kedacore/keda), serving ferry's decision as a
token-weighted metric.

A ScaledObject names the model in its trigger metadata (``model: tiny-random``). The metric spec's target is the
backlog one replica should hold (``target_backlog_tokens``); the metric value is that target times the replicas
ferry's policy wants (forecast and backlog, after its windows and cooldowns). KEDA's HPA, with the default
AverageValue target, computes ceil(value / target): exactly the policy's replicas. IsActive is true while the policy
wants at least one replica, so KEDA scales a cold model to zero and wakes it on the first request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import grpc

from services.scaler.externalscaler import externalscaler_pb2 as pb
from services.scaler.externalscaler import externalscaler_pb2_grpc as pb_grpc
from services.scaler.policy import Decision

logger = logging.getLogger(__name__)

METRIC_PREFIX = "ferry-tokens-"


def metric_name(model: str) -> str:
    return METRIC_PREFIX + model


class ExternalScaler(pb_grpc.ExternalScalerServicer):
    def __init__(
        self,
        decisions: Callable[[str], Decision | None],
        known: Callable[[str], bool],
        target_tokens: float,
        stream_interval_s: float,
    ) -> None:
        self._decisions = decisions
        self._known = known
        self._target = target_tokens
        self._interval = stream_interval_s

    async def _model(self, ref: pb.ScaledObjectRef, context: grpc.aio.ServicerContext) -> str:
        model = ref.scalerMetadata.get("model", "")
        if not model:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "trigger metadata must name the model: model: <id>")
        if not self._known(model):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {model!r} is not scaled by this scaler")
        return model

    def _active(self, model: str) -> bool:
        d = self._decisions(model)
        return d is not None and d.desired > 0

    async def IsActive(self, request: pb.ScaledObjectRef, context: grpc.aio.ServicerContext) -> pb.IsActiveResponse:  # noqa: N802
        return pb.IsActiveResponse(result=self._active(await self._model(request, context)))

    async def StreamIsActive(  # noqa: N802
        self, request: pb.ScaledObjectRef, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.IsActiveResponse]:
        model = await self._model(request, context)
        last: bool | None = None
        while True:
            active = self._active(model)
            if active != last:
                yield pb.IsActiveResponse(result=active)
                last = active
            await asyncio.sleep(self._interval)

    def _spec(self, model: str) -> pb.GetMetricSpecResponse:
        return pb.GetMetricSpecResponse(
            metricSpecs=[
                pb.MetricSpec(
                    metricName=metric_name(model), targetSize=round(self._target), targetSizeFloat=self._target
                )
            ]
        )

    async def GetMetricSpec(  # noqa: N802
        self, request: pb.ScaledObjectRef, context: grpc.aio.ServicerContext
    ) -> pb.GetMetricSpecResponse:
        return self._spec(await self._model(request, context))

    async def StreamMetricSpec(  # noqa: N802
        self, request: pb.ScaledObjectRef, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GetMetricSpecResponse]:
        # the target never changes while the scaler runs: send it once, keep the stream open
        yield self._spec(await self._model(request, context))
        await asyncio.Event().wait()

    async def GetMetrics(
        self, request: pb.GetMetricsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetMetricsResponse:  # noqa: N802
        model = await self._model(request.scaledObjectRef, context)
        if request.metricName and request.metricName != metric_name(model):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown metric {request.metricName!r}")
        d = self._decisions(model)
        value = (d.desired if d is not None else 0) * self._target
        return pb.GetMetricsResponse(
            metricValues=[
                pb.MetricValue(metricName=metric_name(model), metricValue=round(value), metricValueFloat=value)
            ]
        )


async def start_server(servicer: ExternalScaler, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    pb_grpc.add_ExternalScalerServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    logger.info("KEDA external scaler listening on %s:%d", host, bound)
    return server, bound
