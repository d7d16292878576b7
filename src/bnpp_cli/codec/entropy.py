"""The entropy-coded code: a learned factorized prior, its integer tables, and the coder glue.

Balle, Minnen, Singh, Hwang & Johnston, "Variational image compression with a scale hyperprior"
(ICLR 2018, appendix 6.1: the univariate non-parametric density), as in CompressAI's
``EntropyBottleneck``; the coder is constriction's range coder (Bamler, 2022)::

    training: y (encoder, unbounded) --+ U(-1/2, 1/2)--> likelihood p(y~) under the prior (rate)
                                       `--clamp, round (straight-through)--> z, to the decoder
    eval:     y --clamp to [-B, B], round--> z (integers as float)         likelihood p(z)
    wire:     z --symbols z + B in [0, 2B]--> range coder(integer tables) --> one stream per image

The prior is one density per code channel (C' of a (C', H', W') code; each symbol of a flat code).
Its integer tables, ``counts`` (C', 2B + 1) summing to 2^16 per channel with every count >= 1, are
computed from the learned density (``update_tables``, called by `bnpp fit` before each save) and, at
the end of a fit, from the histogram of the trained code on the training images (codec.calibrate: a
density trained for a few hundred steps lags the code it models, and the coder pays for the gap), then
stored with the weights: a stream decodes bit-exactly in any process and at any thread count,
because the coder never sees a float the network computed. Values beyond [-B, B] are clamped in the
forward pass too, so the evaluated pipeline sees exactly the symbols the coder sends; the edge
symbols carry the tails' probability mass.

Stream bytes: constriction writes 32-bit words. The reader pads a stream with zero bytes to whole
words, so the writer drops trailing bytes for as long as the stream still decodes to the same symbols
(the range decoder only needs some point of the final interval): a stream is a whole number of
bytes, often a word shorter than the coder's flush. That trimming is deterministic, so a stream that
is not exactly the trimmed encoding of what it decodes to is refused (EntropyError); the wire
frame's CRC-32 catches the rest.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CodecError, WireError
from ..link import wire

SUPPORT = 31  # B: symbols in [-31, 31]; a trained code uses a handful, the rest cost <= 63 / 2^16 of mass
PRECISION = 16  # bits of the integer tables: counts sum to 2^16
FILTERS = (3, 3, 3)  # hidden widths of the density's monotone MLP (Balle 2018; CompressAI's default)
INIT_SCALE = 10.0  # initial spread of the density (CompressAI's default)
LIKELIHOOD_FLOOR = 1e-9  # keeps -log2 finite: at most ~30 bits for an impossible symbol


class EntropyError(WireError):
    """A bitstream that does not decode: corrupted, truncated, or coded with other tables."""


def _coder():
    try:
        import constriction
    except ImportError:  # pragma: no cover - a declared dependency
        raise CodecError("the entropy preset needs constriction, which is not installed",
                         hint="pip install 'bnpp[entropy]'") from None
    return constriction


class FactorizedPrior(nn.Module):
    """The last module of an entropy preset's encoder: y -> integer code z; keeps the likelihoods.

    ``likelihoods`` (N, *code) is the last forward's p(z) (p(y~) under the density in training;
    under the integer tables in eval once they are set, so the estimate is what an ideal coder with
    those tables would spend); ``bits()`` gives the rate estimate per image, -sum log2 of them. ``counts`` is the frozen integer table."""

    def __init__(self, channels: int, support: int = SUPPORT):
        super().__init__()
        self.channels, self.support = int(channels), int(support)
        dims = (1, *FILTERS, 1)
        scale = INIT_SCALE ** (1 / (len(dims) - 1))
        self.matrices, self.biases, self.factors = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
        for i in range(len(dims) - 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(dims) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))
        self.register_buffer("counts", torch.zeros(channels, 2 * support + 1, dtype=torch.int32))
        self.likelihoods: Tensor | None = None
        self._fixed_code: Tensor | None = None

    def _logits_cdf(self, x: Tensor) -> Tensor:
        """x (C', 1, M) -> logit of the learned CDF at x, (C', 1, M); monotone in x."""
        for i, (m, b) in enumerate(zip(self.matrices, self.biases)):
            x = torch.matmul(F.softplus(m), x) + b
            if i < len(self.factors):
                x = x + torch.tanh(self.factors[i]) * torch.tanh(x)
        return x

    def likelihood(self, y: Tensor) -> Tensor:
        """p(y) = CDF(y + 1/2) - CDF(y - 1/2) per element, y (N, *code)."""
        n = y.shape[0]
        v = y.reshape(n, self.channels, -1).permute(1, 0, 2).reshape(self.channels, 1, -1).float()
        lower, upper = self._logits_cdf(v - 0.5), self._logits_cdf(v + 0.5)
        sign = -torch.sign(lower + upper).detach()  # evaluate in the tail where sigmoid is accurate
        p = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs().clamp_min(LIKELIHOOD_FLOOR)
        return p.reshape(self.channels, n, -1).permute(1, 0, 2).reshape(y.shape)

    def forward(self, y: Tensor) -> Tensor:
        if y.shape[1] != self.channels:
            raise CodecError(f"code of shape {tuple(y.shape)} does not match the prior's {self.channels} channels")
        b = float(self.support)
        z = y + (torch.round(y.clamp(-b, b)) - y).detach()  # straight-through integer code
        if self.training:
            noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
            self.likelihoods, self._fixed_code = self.likelihood(noisy), noisy.detach()
        elif self.tables_set:  # eval: what the coder's integer tables give each symbol
            self.likelihoods, self._fixed_code = self.table_likelihood(z.detach()), z.detach()
        else:
            self.likelihoods, self._fixed_code = self.likelihood(z.detach()), z.detach()
        return z

    @property
    def tables_set(self) -> bool:
        return bool((self.counts > 0).all())

    def table_likelihood(self, z: Tensor) -> Tensor:
        """p(z) under the frozen integer tables, per element of an integer code z (N, *code)."""
        n = z.shape[0]
        sym = symbol_indices(z, self.channels, self.support)
        probs = self.counts.to(torch.float64) / 2.0**PRECISION
        p = torch.gather(probs.unsqueeze(0).expand(n, -1, -1), 2, sym)
        return p.to(torch.float32).reshape(z.shape)

    def bits(self) -> Tensor:
        """Rate estimate of the last forward, bits per image (N,): -sum log2 p."""
        if self.likelihoods is None:
            raise CodecError("no forward pass yet: the rate is measured on the last code")
        return -torch.log2(self.likelihoods).flatten(1).sum(1)

    def rate_loss(self, lmbda: float) -> Tensor:
        """lmbda x mean bits per image (trains the encoder toward a cheaper code), plus the bits per
        symbol of the code held fixed (trains the prior to fit the code whatever lmbda is; Adam makes
        its scale irrelevant, and per symbol it stays next to a cross-entropy in the logged loss)."""
        bits = self.bits()
        fixed = -torch.log2(self.likelihood(self._fixed_code)).mean()
        return lmbda * bits.mean() + fixed

    @torch.no_grad()
    def pmf(self) -> Tensor:
        """Probabilities of the 2B + 1 symbols per channel, (C', 2B + 1) float64; tails in the edges."""
        b, device = self.support, self.counts.device
        edges = torch.arange(-b, b, dtype=torch.float32, device=device) + 0.5  # 2B inner bin edges
        cdf = torch.sigmoid(self._logits_cdf(edges.expand(self.channels, 1, -1)).double()).reshape(self.channels, -1)
        cdf = torch.cat([torch.zeros(self.channels, 1, dtype=torch.float64, device=device), cdf,
                         torch.ones(self.channels, 1, dtype=torch.float64, device=device)], dim=1)
        return (cdf[:, 1:] - cdf[:, :-1]).clamp_min(0.0)

    @torch.no_grad()
    def update_tables(self, pmf: Tensor | None = None) -> Tensor:
        """Freeze the integer tables from ``pmf`` (C', 2B + 1), by default the current density;
        returns them (C', 2B + 1) int32."""
        self.counts.copy_(integer_tables(self.pmf() if pmf is None else pmf))
        return self.counts

    @torch.no_grad()
    def histogram(self, z: Tensor) -> Tensor:
        """Occurrences of each symbol per channel in an integer code z (N, *code): (C', 2B + 1) float64."""
        sym = symbol_indices(z.detach(), self.channels, self.support)
        sym = sym.permute(1, 0, 2).reshape(self.channels, -1).cpu()
        out = torch.zeros(self.channels, 2 * self.support + 1, dtype=torch.float64)
        return out.scatter_add_(1, sym, torch.ones_like(sym, dtype=torch.float64))


def symbol_indices(z: Tensor, channels: int, support: int) -> Tensor:
    """An integer code z (N, *code) -> (N, C', positions) int64 indices into a channel's 2B + 1
    table entries (symbol + B; values beyond [-B, B] clamped, as the forward pass does)."""
    return z.reshape(z.shape[0], channels, -1).round().clamp(-support, support).to(torch.int64) + support


def integer_tables(pmf: Tensor, precision: int = PRECISION) -> Tensor:
    """(C, K) probabilities -> (C, K) int32 counts >= 1 summing to 2^precision per row."""
    total, k = 2**precision, pmf.shape[1]
    p = pmf / pmf.sum(1, keepdim=True).clamp_min(1e-300)
    counts = torch.floor(p * (total - k)).to(torch.int64) + 1
    counts[torch.arange(len(counts)), counts.argmax(1)] += total - counts.sum(1)
    return counts.to(torch.int32)


class SymbolTables(nn.Module):
    """The first module of an entropy preset's decoder: identity, holding the edge's copy of the
    prior's integer tables (the edge half has no encoder)."""

    def __init__(self, channels: int, support: int = SUPPORT):
        super().__init__()
        self.channels, self.support = int(channels), int(support)
        self.register_buffer("counts", torch.zeros(channels, 2 * support + 1, dtype=torch.int32))

    def forward(self, x: Tensor) -> Tensor:
        return x


def find_prior(module: nn.Module) -> FactorizedPrior | None:
    return next((m for m in module.modules() if isinstance(m, FactorizedPrior)), None)


def find_tables(module: nn.Module) -> FactorizedPrior | SymbolTables | None:
    """The prior (encoder side) or the tables (decoder side) inside ``module``, or None."""
    return next((m for m in module.modules() if isinstance(m, (FactorizedPrior, SymbolTables))), None)


def update_tables(codec: nn.Module, pmf: Tensor | None = None) -> None:
    """Freeze the prior's integer tables (from ``pmf``, by default its density) and copy them to the
    decoder's (no-op for other codecs)."""
    prior = find_prior(codec)
    if prior is None:
        return
    counts = prior.update_tables(pmf)
    for m in codec.modules():
        if isinstance(m, SymbolTables):
            m.counts.copy_(counts)


def _checked_counts(tables: FactorizedPrior | SymbolTables) -> np.ndarray:
    counts = tables.counts.detach().cpu().numpy().astype(np.int64)
    if counts.min() < 1 or (counts.sum(1) != 2**PRECISION).any():
        raise CodecError("this entropy code's integer tables are not set (the run was saved without "
                         "update_tables): refit or re-save it")
    return (counts / 2.0**PRECISION).astype(np.float32)  # exact: counts < 2^16, a power-of-two scale


def _decode_words(data: bytes, per_symbol: np.ndarray, family) -> np.ndarray | None:
    """The symbols a stream decodes to, or None when the coder refuses it."""
    constriction = _coder()
    try:
        return constriction.stream.queue.RangeDecoder(_stream_words(data)).decode(family, per_symbol)
    except Exception:  # constriction raises on an invalid stream
        return None


def _encode_trimmed(symbols: np.ndarray, per_symbol: np.ndarray, family) -> bytes:
    """The range coder's stream with trailing bytes dropped while it still decodes to ``symbols``."""
    constriction = _coder()
    coder = constriction.stream.queue.RangeEncoder()
    coder.encode(symbols.astype(np.int32), family, per_symbol)
    raw = coder.get_compressed().astype("<u4").tobytes()
    while raw:
        back = _decode_words(raw[:-1], per_symbol, family)
        if back is None or not np.array_equal(back, symbols):
            break
        raw = raw[:-1]
    return raw


def _stream_words(data: bytes) -> np.ndarray:
    pad = (-len(data)) % 4
    return np.frombuffer(bytes(data) + b"\0" * pad, dtype="<u4").astype(np.uint32)


def encode_symbols(z: Tensor, tables: FactorizedPrior | SymbolTables) -> list[bytes]:
    """Integer code (N, *code) -> one range-coded stream per image, with the frozen tables."""
    constriction = _coder()
    probs = _checked_counts(tables)
    n = z.shape[0]
    sym = symbol_indices(z.detach().cpu(), tables.channels, tables.support)
    per_symbol = probs[np.repeat(np.arange(tables.channels), sym.shape[2])]  # (C' H' W', K), C order
    family = constriction.stream.model.Categorical(perfect=False)
    return [_encode_trimmed(sym[i].reshape(-1).numpy(), per_symbol, family) for i in range(n)]


def decode_symbols(streams: Sequence[bytes], tables: FactorizedPrior | SymbolTables,
                   code_shape: Sequence[int]) -> Tensor:
    """Streams -> integer code (N, *code_shape) as float32; EntropyError if a stream does not decode
    to exactly its symbols (a stream that is too long, too short, or corrupted)."""
    constriction = _coder()
    probs = _checked_counts(tables)
    b, numel = tables.support, math.prod(code_shape)
    if numel % tables.channels:
        raise EntropyError(f"code shape {tuple(code_shape)} does not match the tables' {tables.channels} channels")
    per_symbol = probs[np.repeat(np.arange(tables.channels), numel // tables.channels)]
    family = constriction.stream.model.Categorical(perfect=False)
    out = np.empty((len(streams), numel), dtype=np.int64)
    for i, data in enumerate(streams):
        back = _decode_words(bytes(data), per_symbol, family)
        if back is None:
            raise EntropyError(f"bitstream of image {i} ({len(data)} bytes) does not decode")
        if _encode_trimmed(back, per_symbol, family) != bytes(data):
            raise EntropyError(f"bitstream of image {i} ({len(data)} bytes) is corrupted or truncated: "
                               f"it is not the stream of the code it decodes to")
        out[i] = back
    return torch.from_numpy(out - b).to(torch.float32).reshape(len(streams), *code_shape)


def encode_entropy_frame(z: Tensor, module: nn.Module, pair_id: str) -> bytes:
    """Integer code (N, *code) -> one version-2 wire frame of its streams (``module`` holds the tables)."""
    tables = find_tables(module)
    return wire.encode_streams(encode_symbols(z, tables), tuple(z.shape), pair_id)


def decode_entropy_frame(buf: bytes, module: nn.Module, pair_id: str, code_shape: Sequence[int]) -> Tensor:
    """Wire frame -> integer code (N, *code_shape); WireError for another export, kind or shape,
    EntropyError for a stream that does not decode."""
    frame, streams = wire.decode_streams(buf, expected_pair_id=pair_id)
    if tuple(frame.shape[1:]) != tuple(code_shape):
        raise wire.WireError(f"frame shape {frame.shape} does not match this edge's code (N, "
                             f"{', '.join(map(str, code_shape))})")
    return decode_symbols(streams, find_tables(module), code_shape)
