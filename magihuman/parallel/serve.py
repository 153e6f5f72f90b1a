"""Rank 0 drives, the other ranks serve DiT forwards.

Rank 0 runs the whole engine; each call of one of its DiTs sends a command header, broadcasts the inputs, and
all ranks run their share of the Ulysses forward. Workers keep no sampler state, so Stop is rank 0's affair: it
simply sends no further command. A failed forward leaves the group out of step: the driver then refuses work
(`WorkerLost`) and torchrun restarts the job.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.distributed as dist

from magihuman.errors import MagiHumanError
from magihuman.model.dit import DiT
from magihuman.parallel.runtime import ParallelContext
from magihuman.parallel.ulysses import ContextParallel

Tensor = torch.Tensor
Velocity = tuple[Tensor, Tensor]
PairFn = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Velocity, Velocity]]

STOP, FORWARD, PAIR = 0, 1, 2
_HEADER = 8  # op, model index, T, H, W, audio rows, text rows, negative text rows


class WorkerLost(MagiHumanError):
    """The multi-GPU group can no longer serve forwards (a worker process died or a forward failed)."""


def _checksum(dit: DiT) -> float:
    """A cheap fingerprint of the weights (fp32 tensors that no speed step changes)."""
    tensors = (dit.adapter.video_embedder.weight, dit.final_linear_video.weight)
    return float(sum(t.detach().float().cpu().double().sum() for t in tensors))


def _handshake(ctx: ParallelContext, dits: Mapping[str, DiT]) -> list[str]:
    """Every rank must hold the same DiTs (names, configurations, weights); returns the names in order."""
    mine = [(name, dits[name].config, _checksum(dits[name])) for name in sorted(dits)]
    everyone: list = [None] * ctx.world
    dist.all_gather_object(everyone, mine, group=ctx.control)
    for rank, theirs in enumerate(everyone):
        if theirs != everyone[0]:
            raise RuntimeError(
                f"rank {rank} holds other DiTs than rank 0 ({[t[0] for t in theirs]} vs "
                f"{[t[0] for t in everyone[0]]}, or other weights): start every rank with the same flags"
            )
    return [name for name, _, _ in mine]


def _install(ctx: ParallelContext, dits: Mapping[str, DiT]) -> None:
    for dit in dits.values():
        dit.set_context_parallel(ContextParallel(ctx.world_shard))


@contextmanager
def _on_branch(ctx: ParallelContext, dit: DiT) -> Iterator[None]:
    """Run the next forward on this rank's CFG branch group instead of all ranks."""
    cp = dit.context_parallel
    assert cp is not None
    cp.shard = ctx.branch_shard
    try:
        yield
    finally:
        cp.shard = ctx.world_shard


def _send_header(ctx: ParallelContext, op: int, index: int = 0, video=None, audio=None, text=None, negative=None):
    header = torch.zeros(_HEADER, dtype=torch.int64)
    header[0], header[1] = op, index
    if video is not None:
        header[2:5] = torch.tensor(video.shape[2:])
        header[5], header[6] = audio.shape[1], text.shape[0]
        header[7] = 0 if negative is None else negative.shape[0]
    dist.broadcast(header, src=0, group=ctx.control)


def _broadcast_inputs(ctx: ParallelContext, tensors: list[Tensor]) -> list[Tensor]:
    out = []
    for t in tensors:
        t = t.to(ctx.device, torch.float32).contiguous()  # the DiT's first step reads every input as fp32
        dist.broadcast(t, src=0)
        out.append(t)
    return out


def _pair_forward(
    ctx: ParallelContext, dit: DiT, forward: Callable, video, audio, text, negative
) -> tuple[Velocity, Velocity] | None:
    """Both CFG branches at once; rank 0 receives the unconditional velocity from branch 1's first rank."""
    with _on_branch(ctx, dit):
        mine = forward(video, audio, negative if ctx.branch else text)
    other_first = ctx.layout.branch_cp  # rank 0 of branch 1
    if ctx.rank == other_first:
        for t in mine:
            dist.send(t.contiguous(), dst=0)
    if ctx.rank == 0:
        theirs = tuple(torch.empty_like(t) for t in mine)
        for t in theirs:
            dist.recv(t, src=other_first)
        return mine, theirs  # type: ignore[return-value]
    return None


# --- Rank 0 ----------------------------------------------------------------------------------------------


class Driver:
    """Rank 0's side: every forward of the engine's DiTs becomes a forward of all ranks, one in flight."""

    def __init__(self, ctx: ParallelContext, dits: Mapping[str, DiT]) -> None:
        if not ctx.is_driver:
            raise ValueError("the driver runs on rank 0; other ranks call serve_forever")
        self.ctx, self.dits = ctx, dict(dits)
        self.names = _handshake(ctx, self.dits) if ctx.world > 1 else sorted(self.dits)
        self.broken: str | None = None
        self._lock = threading.Lock()
        self._detached = False
        self._stopped = False
        self._forwards: dict[int, Callable] = {}  # the DiTs' own forwards, by index in `names`
        if ctx.world > 1:
            _install(ctx, self.dits)
            for name, dit in self.dits.items():
                self._forwards[self.names.index(name)] = dit.forward
                dit.forward = self._driven(name, dit.forward)  # instance attribute: hooks still run

    def describe(self) -> str:
        return self.ctx.describe()

    def guided_pair(self, dit: DiT) -> PairFn | None:
        """Both CFG forwards at once on the two branches; None without CFG branches."""
        if self.ctx.layout.cfg != 2 or self._detached:
            return None
        index = self.names.index(next(n for n, d in self.dits.items() if d is dit))

        def pair(video: Tensor, audio: Tensor, text: Tensor, negative: Tensor) -> tuple[Velocity, Velocity]:
            def run():
                _send_header(self.ctx, PAIR, index, video, audio, text, negative)
                inputs = _broadcast_inputs(self.ctx, [video, audio, text, negative])
                return _pair_forward(self.ctx, dit, self._forwards[index], *inputs)

            return self._guarded(run)

        return pair

    @contextmanager
    def detached(self) -> Iterator[None]:
        """Rank 0 alone, workers idle: the single-process baseline of the benchmark, same models."""
        saved = {name: dit.context_parallel for name, dit in self.dits.items()}
        self._detached = True
        for dit in self.dits.values():
            dit.set_context_parallel(None)
        try:
            yield
        finally:
            self._detached = False
            for name, dit in self.dits.items():
                dit.set_context_parallel(saved[name])

    def shutdown(self) -> None:
        """Send STOP: workers leave `serve_forever`. Idempotent."""
        with self._lock:
            if self._stopped or self.ctx.world == 1:
                return
            self._stopped = True
            if self.broken is None:
                try:
                    _send_header(self.ctx, STOP)
                except Exception:  # noqa: BLE001 - a dead group cannot be stopped; torchrun tears it down
                    pass

    def _driven(self, name: str, forward: Callable) -> Callable:
        index = self.names.index(name)

        def driven(video: Tensor, audio: Tensor, text: Tensor) -> Velocity:
            if self._detached:
                return forward(video, audio, text)

            def run():
                _send_header(self.ctx, FORWARD, index, video, audio, text)
                return forward(*_broadcast_inputs(self.ctx, [video, audio, text]))

            return self._guarded(run)

        return driven

    def _guarded(self, run: Callable):
        with self._lock:
            if self.broken is not None:
                raise WorkerLost(self.broken)
            if self._stopped:
                raise WorkerLost("the multi-GPU group has been shut down")
            try:
                with torch.inference_mode():
                    return run()
            except BaseException as exc:
                # Some ranks may be inside a collective: the group is out of step and cannot be reused.
                lost = isinstance(exc, dist.DistError) or "connection" in str(exc).lower()
                cause = "a worker process stopped" if lost else f"a forward failed ({type(exc).__name__}: {exc})"
                self.broken = (
                    f"the {self.describe()} group cannot continue: {cause}. Restart the job; torchrun "
                    "restarts it by itself when started with --max-restarts"
                )
                if lost:
                    raise WorkerLost(self.broken) from exc
                raise


# --- Other ranks -----------------------------------------------------------------------------------------


@torch.inference_mode()
def serve_forever(ctx: ParallelContext, dits: Mapping[str, DiT]) -> None:
    """Serve rank 0's forwards until STOP. A failing forward ends this process, so torchrun restarts the group."""
    if ctx.is_driver:
        raise ValueError("rank 0 drives; serve_forever is for the other ranks")
    names = _handshake(ctx, dits)
    _install(ctx, dits)
    header = torch.empty(_HEADER, dtype=torch.int64)
    channels = {
        name: (
            dits[name].config.latent_channels,
            dits[name].config.audio_in_channels,
            dits[name].config.text_in_channels,
        )
        for name in names
    }
    while True:
        dist.broadcast(header, src=0, group=ctx.control)
        op, index, t, h, w, a, length, negative_length = (int(v) for v in header)
        if op == STOP:
            return
        if op not in (FORWARD, PAIR):
            raise RuntimeError(f"rank {ctx.rank}: unknown command {op} from rank 0; stopping this worker")
        name = names[index]
        dit = dits[name]
        c, ca, ct = channels[name]
        shapes = [(1, c, t, h, w), (1, a, ca), (length, ct)] + ([(negative_length, ct)] if op == PAIR else [])
        inputs = [torch.empty(shape, dtype=torch.float32, device=ctx.device) for shape in shapes]
        try:
            for x in inputs:
                dist.broadcast(x, src=0)
            if op == FORWARD:
                dit(*inputs)
            else:
                _pair_forward(ctx, dit, dit, *inputs)
        except BaseException:
            print(f"rank {ctx.rank}: the {name} forward failed; stopping this worker", file=sys.stderr)
            traceback.print_exc()
            raise
