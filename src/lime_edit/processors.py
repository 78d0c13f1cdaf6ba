"""LIME's attention processors and the context manager that installs them.

One wrapper, :class:`LimeAttnProcessor`, is installed around every attention
layer of the U-Net for the duration of one denoising pass.  It is inert (calls
the processor it wraps, unchanged) except where the pass's :class:`PassState`
asks it to act:

* **capture** (localization, one step): keep the layer's OUTPUT for the
  image-only CFG branch (self- and cross-attention) and, for cross-attention,
  the head-averaged attention probabilities of the text+image branch;
* **regularize** (edit pass, configured steps and levels): in cross-attention,
  for query pixels inside the RoI, mask the unrelated tokens' logits to -inf
  ("penalize", passed to ``scaled_dot_product_attention`` as an additive mask)
  or give the related tokens all the attention, equally ("reward", the limit of
  assigning them +inf: the output row becomes the mean of their values).

Explicit softmax probabilities are computed only at the capture step, only for
the layers read; all other attention stays on ``F.scaled_dot_product_attention``.
Head counts come from ``attn.heads``; CFG branches are split with ``chunk``;
levels (``latent / L`` grids) are found from the token count, so non-square
latents work.
"""

from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from .errors import LimeEditError

#: processors whose maths this module reproduces when it has to act itself.
STOCK_PROCESSORS = (AttnProcessor2_0, AttnProcessor)


@dataclass
class PassState:
    """Everything the processors of one denoising pass share (no global state).

    latent_hw: ``(H, W)`` of the latent grid of this pass.
    batch: ``B``, number of images (the U-Net sees ``branches * B`` rows).
    step: index of the denoising step being run (advanced by the pipeline's
        ``callback_on_step_end``).
    """

    latent_hw: tuple[int, int]
    batch: int
    step: int = 0
    # guidance layout (from the backbone): rows are ``branches`` blocks of ``batch``
    feature_branch: int = 1     # image-only branch: its layer outputs are clustered
    attention_branch: int = 0   # instruction branch: its cross-attention is read
    reg_branches: tuple[int, ...] | None = None  # branches regularized (None = all)
    # capture
    capture_step: int | None = None
    capture_levels: frozenset[int] = frozenset()
    features: list[tuple[str, int, torch.Tensor]] = field(default_factory=list)     # (B, C, h, w)
    cross_probs: list[tuple[str, int, torch.Tensor]] = field(default_factory=list)  # (B, T, h, w)
    # regularization
    reg_steps: range = range(0)
    reg_levels: frozenset[int] = frozenset()
    mode: str = "penalize"
    rule: str = "text_mass"             # joint attention only (see lime_edit.joint)
    text_len: int | None = None         # joint attention: text positions before the image tokens
    context_hw: tuple[int, int] | None = None  # joint attention: context-image grid (None: latent_hw)
    forward_name: str | None = None     # joint attention: the pipeline's name of the forward being run
    roi: torch.Tensor | None = None     # (B, Hr, Wr) bool, any grid (resized per layer)
    tokens: torch.Tensor | None = None  # (B, T) bool: kept (penalize) / rewarded (reward) tokens
    # bookkeeping
    levels_seen: set[int] = field(default_factory=set)
    _rows: dict = field(default_factory=dict)
    _bias: dict = field(default_factory=dict)

    def level_of(self, n_tokens: int) -> int | None:
        h, w = self.latent_hw
        lvl = 1
        while lvl <= max(h, w):
            if (h // lvl) * (w // lvl) == n_tokens and h % lvl == 0 and w % lvl == 0:
                return lvl
            lvl *= 2
        return None

    @property
    def capturing(self) -> bool:
        return self.capture_step is not None and self.step == self.capture_step

    @property
    def regularizing(self) -> bool:
        return self.roi is not None and self.step in self.reg_steps

    def roi_rows(self, level: int, device: torch.device) -> torch.Tensor:
        """``(B, h*w)`` bool: which query pixels of a level-``level`` layer are in the RoI."""
        key = (level, device)
        if key not in self._rows:
            h, w = self.latent_hw[0] // level, self.latent_hw[1] // level
            m = F.interpolate(self.roi[:, None].float(), size=(h, w), mode="nearest")[:, 0] > 0.5
            self._rows[key] = m.flatten(1).to(device)
        return self._rows[key]

    def penalty(self, level: int, branches: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Additive mask ``(branches*B, 1, h*w, T)``: -inf where a query pixel is in
        the RoI and the token is not kept, else 0 (same for every regularized branch,
        0 in the others)."""
        key = (level, branches, dtype, device)
        if key not in self._bias:
            rows = self.roi_rows(level, device)                           # (B, Nq)
            drop = ~self.tokens.to(device)                                # (B, T)
            hit = rows[:, :, None] & drop[:, None, :]                     # (B, Nq, T)
            bias = torch.zeros(hit.shape, dtype=dtype, device=device).masked_fill_(hit, float("-inf"))
            zero = torch.zeros_like(bias)
            self._bias[key] = torch.cat([bias if self.branch_regularized(k) else zero
                                         for k in range(branches)])[:, None]  # (branches*B, 1, Nq, T)
        return self._bias[key]

    def branch_regularized(self, k: int) -> bool:
        return self.reg_branches is None or k in self.reg_branches


class LimeAttnProcessor:
    """Wraps one layer's processor; acts only when its :class:`PassState` says so.

    The wrapped processor may be a stock one, or one that edits attention
    probabilities (``edit_probs(probs (rows, heads, Nq, T), is_cross) -> probs``, e.g.
    Prompt-to-Prompt's controller): LIME then computes the probabilities explicitly,
    lets it edit them, and applies its regularization *after* the edit (penalize =
    zero the unrelated tokens of RoI rows and renormalize, the same as -inf logits).
    """

    #: other attention controls may install themselves under this wrapper (``self.prev``)
    accepts_inner = True

    def __init__(self, prev, state: PassState, name: str):
        self.prev = prev
        self.state = state
        self.name = name

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args, **kwargs) -> torch.Tensor:
        st = self.state
        n_query = hidden_states.shape[1] if hidden_states.ndim == 3 else \
            hidden_states.shape[2] * hidden_states.shape[3]
        level = st.level_of(n_query)
        if level is not None:
            st.levels_seen.add(level)
        is_cross = encoder_hidden_states is not None
        capture = st.capturing and level in st.capture_levels
        regularize = is_cross and level in st.reg_levels and st.regularizing
        if not (regularize or (capture and is_cross)):
            out = self.prev(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
            if capture:
                self._keep_output(out, level)
            return out
        if not isinstance(self.prev, STOCK_PROCESSORS) and not hasattr(self.prev, "edit_probs"):
            raise LimeEditError(
                f"attention layer {self.name} uses {type(self.prev).__name__}; LIME reads and regularizes "
                "cross-attention only on layers with the stock AttnProcessor2_0/AttnProcessor")
        return self._attend(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                            level, capture, regularize)

    # -- helpers ---------------------------------------------------------------------------
    def _branches(self, rows: int) -> int:
        b = self.state.batch
        if rows % b:
            raise RuntimeError(f"{self.name}: batch {rows} is not a multiple of {b} images")
        return rows // b

    def _keep_output(self, out: torch.Tensor, level: int) -> None:
        """Store the image-only branch (CFG branch 1 of 3) of a layer output as (B, C, h, w)."""
        st = self.state
        branches = self._branches(out.shape[0])
        part = out.chunk(branches)[st.feature_branch if branches > st.feature_branch else 0].detach()
        h, w = st.latent_hw[0] // level, st.latent_hw[1] // level
        if part.ndim == 3:                                   # (B, N, C) -> (B, C, h, w)
            part = part.transpose(1, 2).reshape(part.shape[0], -1, h, w)
        st.features.append((self.name, level, part))  # model dtype: fp16 halves capture memory on GPU

    def _attend(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                level: int, capture: bool, regularize: bool) -> torch.Tensor:
        # Same steps as diffusers' AttnProcessor2_0, with LIME's two additions.
        st = self.state
        query, key, value, attention_mask, frame = attention_inputs(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb)  # (rows, heads, N, d) each
        batch = query.shape[0]
        branches = self._branches(batch)
        editor = None if isinstance(self.prev, STOCK_PROCESSORS) else self.prev.edit_probs
        probs_all = None
        if editor is not None:  # explicit probabilities, edited by the wrapped control
            logits = query.float() @ key.float().transpose(-1, -2) * attn.scale
            if attention_mask is not None:
                logits = logits + attention_mask.float()
            probs_all = editor(logits.softmax(-1), True)                                # (rows, heads, Nq, T)

        if capture and probs_all is not None:
            b = st.batch
            a = st.attention_branch if branches > st.attention_branch else 0
            probs = probs_all[a * b:(a + 1) * b].mean(1)
            h, w = st.latent_hw[0] // level, st.latent_hw[1] // level
            st.cross_probs.append((self.name, level, probs.transpose(1, 2).reshape(b, -1, h, w)))
        elif capture:  # explicit probabilities, instruction branch only, head-averaged
            b = st.batch
            a = st.attention_branch if branches > st.attention_branch else 0
            rows = slice(a * b, (a + 1) * b)
            logits = query[rows].float() @ key[rows].float().transpose(-1, -2) * attn.scale  # (B, heads, Nq, T)
            if attention_mask is not None:
                logits = logits + attention_mask[rows].float()
            probs = logits.softmax(-1).mean(1)                                          # (B, Nq, T)
            h, w = st.latent_hw[0] // level, st.latent_hw[1] // level
            st.cross_probs.append((self.name, level, probs.transpose(1, 2).reshape(b, -1, h, w)))

        if regularize and st.mode == "penalize":
            bias = st.penalty(level, branches, query.dtype, query.device)               # (rows, 1, Nq, T)
            if bias.shape[-1] != key.shape[2]:
                raise LimeEditError(f"{self.name}: {key.shape[2]} text tokens, token roles cover {bias.shape[-1]}")
            if probs_all is not None:
                probs_all = penalize_probs(probs_all, bias)
            else:
                attention_mask = bias if attention_mask is None else attention_mask + bias
        if probs_all is not None:
            out = probs_all.to(value.dtype) @ value                                     # (rows, heads, Nq, d)
        else:
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                 dropout_p=0.0, is_causal=False)       # (rows, heads, Nq, d)
        if regularize and st.mode == "reward":
            weights = st.tokens.to(value.device, value.dtype).repeat(branches, 1)       # (rows, T)
            weights = weights / weights.sum(1, keepdim=True).clamp_min(1)
            vbar = torch.einsum("rt,rhtd->rhd", weights, value)[:, :, None]            # (rows, heads, 1, d)
            roi = st.roi_rows(level, out.device)                                        # (B, Nq)
            rows = torch.cat([roi if st.branch_regularized(k) else torch.zeros_like(roi)
                              for k in range(branches)])[:, None, :, None]             # (rows, 1, Nq, 1)
            out = torch.where(rows, vbar.to(out.dtype), out)

        out = attention_output(attn, out, frame)
        if capture:
            self._keep_output(out, level)
        return out


def penalize_probs(probs: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Probabilities ``(rows, heads, Nq, T)`` with the tokens that the additive mask
    ``bias`` sets to -inf zeroed and each row renormalized: the same as adding ``bias``
    to the logits before the softmax (used when a wrapped control edited the probabilities)."""
    keep = bias == 0
    kept = probs * keep
    kept = kept / kept.sum(-1, keepdim=True).clamp_min(1e-30)
    return torch.where(keep.all(-1, keepdim=True), probs, kept)     # rows without a -inf: unchanged


def attention_inputs(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
    """The first half of diffusers' ``AttnProcessor2_0``: norms, projections, heads.

    Returns ``(query, key, value, attention_mask, frame)`` with ``query`` ``(rows, heads,
    Nq, d)``, ``key``/``value`` ``(rows, heads, Nk, d)``, the mask ``(rows, heads, Nq, Nk)``
    or None, and ``frame`` what :func:`attention_output` needs to finish the layer.
    Self-attention when ``encoder_hidden_states`` is None."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape4 = hidden_states.shape if hidden_states.ndim == 4 else None
    if shape4 is not None:
        batch, channel, height, width = shape4
        hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
    batch, seq_len, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
        attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)                                       # (rows, Nq, inner)
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key = attn.to_k(encoder_hidden_states)                                 # (rows, Nk, inner)
    value = attn.to_v(encoder_hidden_states)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)      # (rows, heads, Nq, d)
    key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)          # (rows, heads, Nk, d)
    value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)      # (rows, heads, Nk, d)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return query, key, value, attention_mask, (residual, shape4, query.dtype)


def attention_output(attn, out: torch.Tensor, frame) -> torch.Tensor:
    """The second half of ``AttnProcessor2_0``: ``out`` ``(rows, heads, Nq, d)`` -> the layer's output."""
    residual, shape4, dtype = frame
    rows, heads, _, d = out.shape
    out = out.transpose(1, 2).reshape(rows, -1, heads * d).to(dtype)
    out = attn.to_out[0](out)
    out = attn.to_out[1](out)
    if shape4 is not None:
        out = out.transpose(-1, -2).reshape(shape4)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def select_layers(names: list[str], patterns: tuple[str, ...] | None) -> list[str]:
    """Processor names matching any ``fnmatch`` pattern; raises if a pattern matches none."""
    if not patterns:
        return list(names)
    chosen = []
    for pat in patterns:
        hit = [n for n in names if fnmatch.fnmatch(n, pat) or fnmatch.fnmatch(n, pat + ".processor")]
        if not hit:
            raise LimeEditError(f"layers: no attention layer matches {pat!r}; layers look like {names[0]!r}")
        chosen.extend(h for h in hit if h not in chosen)
    return chosen


@contextmanager
def lime_attention(unet, state: PassState, layers: tuple[str, ...] | None = None) -> Iterator[PassState]:
    """Install :class:`LimeAttnProcessor` around the selected layers (all by default);
    the previous processors (IP-Adapter's included) are restored in ``finally``."""
    previous = dict(unet.attn_processors)
    chosen = set(select_layers(list(previous), layers))
    unet.set_attn_processor({name: (LimeAttnProcessor(proc, state, name) if name in chosen else proc)
                             for name, proc in previous.items()})
    try:
        yield state
    finally:
        unet.set_attn_processor(previous)


def check_levels(state: PassState, wanted: frozenset[int], setting: str) -> None:
    missing = sorted(set(wanted) - state.levels_seen)
    if missing:
        have = ", ".join(str(v) for v in sorted(state.levels_seen)) or "none"
        raise LimeEditError(f"{setting}: this U-Net has no attention layer at latent level(s) "
                            f"{', '.join(map(str, missing))} (levels present: {have})")
