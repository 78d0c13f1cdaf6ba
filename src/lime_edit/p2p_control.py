"""Prompt-to-Prompt (Hertz et al.) as pure functions and attention processors.

Three pieces, none of which knows about LIME or a pipeline:

* :func:`align_tokens`: the token alignment between a source and a target caption,
  computed offline from the tokenizer's ids (``difflib``).  Equal captions of the
  same token count are a *word swap* (position ``i`` -> ``i``); otherwise a
  *refinement*: tokens in equal runs are aligned, added/replaced tokens keep their
  own attention (alpha 0).  The end tokens are aligned with each other and every
  padding position after the target's end token reads the same position of the
  source (alpha 1), as P2P's ``seq_aligner.get_mapper`` does.
* :func:`ddim_invert` / :func:`ddim_step_forward`: DDIM inversion (x_{t-1} -> x_t with
  the model output at ``t``, the null-text-inversion convention): the exact inverse of
  the scheduler's DDIM step for a fixed model output, for epsilon, v-prediction and
  sample schedulers.
* :class:`P2PController` + :class:`P2PAttnProcessor` (installed by :func:`p2p_attention`,
  which restores the previous processors): on the conditional rows, the target
  branch's cross-attention probabilities at aligned tokens are replaced by the
  source's (mapped) for the first ``cross_replace`` fraction of steps, words can be
  reweighted, and the target's self-attention is replaced by the source's for the
  first ``self_replace`` fraction of steps at the coarse layers (latent level >=
  ``self_replace_min_level``; P2P's "at most 16x16 at a 64x64 latent" = level 4), or at
  the layers with at most a given number of query tokens (PnPInversion's absolute
  "at most 32x32", the ``piebench`` preset of :mod:`lime_edit.backbones.p2p`).
* :func:`split_word_positions`: P2P's way of finding a word's tokens in a caption (the
  caption split at spaces, exact pieces), used by reweighting and local blend when
  their words are looked up as P2P's code does.

Batch layout (diffusers' ``StableDiffusionPipeline`` with classifier-free guidance and
prompts ``[source_1..source_B, target_1..target_B]``): the U-Net sees four blocks of
``B`` rows, ``[uncond source, uncond target, cond source, cond target]``; P2P edits the
conditional half only, as the original code does.

A processor that wraps this one (LIME's) can ask it to edit probabilities it computed
itself: :meth:`P2PAttnProcessor.edit_probs` is the hook, so LIME's regularization is
applied *after* P2P's replacement and unrelated tokens inside the RoI still get zero
attention.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F

#: U-Net row blocks with CFG (see module docstring)
UNCOND_SRC, UNCOND_TGT, COND_SRC, COND_TGT = 0, 1, 2, 3


@dataclass(frozen=True)
class Alignment:
    """Token alignment of one target caption to its source caption.

    mapper: ``(T,)`` long, the source position each target position reads from.
    alphas: ``(T,)`` float, 1 where the target's map is replaced by the source's.
    mode: "swap" (same token count, position i -> i) or "refine".
    changed: target positions of added or replaced tokens (before the end token).
    changed_source: source positions of replaced or deleted tokens.
    """

    mapper: torch.Tensor
    alphas: torch.Tensor
    mode: str
    changed: list[int]
    changed_source: list[int] = field(default_factory=list)


def _ids(tokenizer, text: str) -> list[int]:
    n = tokenizer.model_max_length - 2
    return list(tokenizer(text, add_special_tokens=False).input_ids)[:n]


_LEFT, _UP, _DIAG = 1, 2, 3


def global_alignment(src: list, tgt: list) -> list[int | None]:
    """For each item of ``tgt``, the index of the ``src`` item it is aligned with, or ``None``:
    the official P2P refinement aligner (``seq_aligner.global_align``): Needleman-Wunsch with
    match 1, mismatch -1, gap 0 (so a longest common subsequence), traced back from the end
    preferring, on ties, to leave the target item unaligned, then the source item, then to
    align the two.  Where several common subsequences are longest this picks the one P2P's
    code picks (``difflib`` may pick another)."""
    n, m = len(src), len(tgt)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    move = [[_LEFT] * (m + 1)] + [[_UP] + [0] * m for _ in range(n)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            left, up = score[i][j - 1], score[i - 1][j]
            diag = score[i - 1][j - 1] + (1 if src[i - 1] == tgt[j - 1] else -1)
            best = max(left, up, diag)
            score[i][j] = best
            move[i][j] = _LEFT if best == left else _UP if best == up else _DIAG
    out: list[int | None] = [None] * m
    i, j = n, m
    while i > 0 or j > 0:
        if move[i][j] == _DIAG:
            i, j = i - 1, j - 1
            out[j] = i
        elif move[i][j] == _LEFT:
            j -= 1
        else:
            i -= 1
    return out


def align_tokens(tokenizer, source: str, target: str, mode: str = "auto", aligner: str = "difflib") -> Alignment:
    """Alignment of ``target``'s padded positions to ``source``'s (see module docstring).

    ``mode``: "auto" (swap when both captions have the same token count, else
    refine), "swap" (requires the same token count) or "refine".
    ``aligner`` (refinement): "difflib" (``difflib.SequenceMatcher`` on the token ids) or
    "p2p" (:func:`global_alignment` on the ids with the start and end tokens, as the
    official P2P code); the two differ only where several alignments keep as many tokens.
    """
    from .errors import LimeEditError

    if aligner not in ("difflib", "p2p"):
        raise LimeEditError(f"aligner: expected 'difflib' or 'p2p', got {aligner!r}")

    T = tokenizer.model_max_length
    src, tgt = _ids(tokenizer, source), _ids(tokenizer, target)
    if mode == "auto":
        mode = "swap" if len(src) == len(tgt) else "refine"
    if mode not in ("swap", "refine"):
        raise LimeEditError(f"p2p mode: expected 'auto', 'swap' or 'refine', got {mode!r}")
    mapper = torch.arange(T)
    alphas = torch.zeros(T)
    changed: list[int] = []
    changed_src: list[int] = []
    if mode == "swap":
        if len(src) != len(tgt):
            raise LimeEditError(f"word swap needs captions of the same token count (source {len(src)}, "
                                f"target {len(tgt)}); use refinement (mode 'refine' or 'auto')")
        alphas[:] = 1.0
        changed = [1 + i for i, (a, b) in enumerate(zip(src, tgt)) if a != b]
        changed_src = list(changed)
    elif aligner == "p2p":
        start, end = object(), object()                    # the start/end tokens match only each other
        match = global_alignment([start, *src, end], [start, *tgt, end])
        for j, i in enumerate(match):                      # j: target position, i: source position
            if i is None:
                changed.append(j)                          # own maps (alpha 0); a valid source slot
                mapper[j] = min(j, 1 + len(src))
            else:
                mapper[j], alphas[j] = i, 1.0
        matched = {i for i in match if i is not None}
        changed_src = [i for i in range(1, 1 + len(src)) if i not in matched]
        t_end = 1 + len(tgt)
        alphas[t_end:] = 1.0
        mapper[t_end + 1:] = torch.arange(t_end + 1, T)
    else:
        alphas[0] = 1.0                                    # start token
        sm = difflib.SequenceMatcher(a=src, b=tgt, autojunk=False)
        for op, i1, i2, j1, j2 in sm.get_opcodes():
            if op == "equal":
                for k in range(j2 - j1):
                    mapper[1 + j1 + k] = 1 + i1 + k
                    alphas[1 + j1 + k] = 1.0
            if op in ("replace", "delete"):
                changed_src.extend(range(1 + i1, 1 + i2))
            if op in ("replace", "insert"):
                changed.extend(range(1 + j1, 1 + j2))
                for k in range(j2 - j1):       # own maps (alpha 0); mapper points at a valid source slot
                    mapper[1 + j1 + k] = min(1 + i1 + k, 1 + len(src))
        # the end tokens are aligned with each other; every position after the target's end
        # token (padding) reads the same position of the source (P2P's seq_aligner.get_mapper)
        s_end, t_end = 1 + len(src), 1 + len(tgt)
        mapper[t_end] = s_end
        alphas[t_end:] = 1.0
        mapper[t_end + 1:] = torch.arange(t_end + 1, T)
    return Alignment(mapper=mapper, alphas=alphas, mode=mode, changed=changed, changed_source=changed_src)


def split_word_positions(tokenizer, text: str, word: str) -> list[int]:
    """Token positions (start token = 0) of ``word`` in ``text``, found the way the official
    P2P code (google/prompt-to-prompt and PnPInversion, ``get_word_inds``) finds them: the
    text is split at single spaces, every piece equal to ``word`` counts (so "grass" does not
    match "grass." and case matters), and the text's tokens are given to the pieces in order
    by the length of their decoded text.  A word that is no piece gives ``[]`` (P2P then
    reweights or blends nothing for it).  Positions past the text encoder's window (whose
    last slot is the end token) are dropped."""
    pieces = text.split(" ")
    wanted = {i for i, piece in enumerate(pieces) if piece == word}
    if not wanted:
        return []
    ids = list(tokenizer(text, add_special_tokens=False).input_ids)
    out: list[int] = []
    piece, filled = 0, 0
    for i, tid in enumerate(ids):
        if piece >= len(pieces):
            break
        filled += len(tokenizer.decode([tid]).strip("#"))
        if piece in wanted:
            out.append(1 + i)
        if filled >= len(pieces[piece]):
            piece, filled = piece + 1, 0
    return [p for p in out if p < tokenizer.model_max_length - 1]


# ------------------------------------------------------------------------- DDIM inversion
def _ddim_coefficients(kind: str, a_t: torch.Tensor, a_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_x, c_m)`` of the deterministic DDIM step ``x_prev = c_x * x_t + c_m * model_out``
    (diffusers' ``DDIMScheduler.step`` with eta 0, no clipping/thresholding) for a
    scheduler's ``prediction_type``: the model output becomes x0/eps at the level of the
    sample it was evaluated on (``a_t``), and the step re-noises x0 with eps to ``a_prev``."""
    s_t, s_p, r_t, r_p = a_t.sqrt(), a_prev.sqrt(), (1 - a_t).sqrt(), (1 - a_prev).sqrt()
    if kind == "epsilon":        # x0 = (x - r_t m) / s_t, eps = m
        return s_p / s_t, r_p - s_p * r_t / s_t
    if kind == "v_prediction":   # x0 = s_t x - r_t m, eps = s_t m + r_t x
        return s_p * s_t + r_p * r_t, r_p * s_t - s_p * r_t
    if kind == "sample":         # x0 = m, eps = (x - s_t m) / r_t
        return r_p / r_t, s_p - r_p * s_t / r_t
    raise ValueError(f"unsupported prediction_type {kind!r}")


def ddim_step_forward(scheduler, model_out: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
    """One inversion step: from the latent at ``t - ratio`` to the latent at ``t`` with the
    model output at ``t`` (null-text inversion's ``next_step``); ``scheduler`` is a
    DDIM scheduler whose ``set_timesteps`` was called.

    The step is the exact inverse of the scheduler's own DDIM step for that model output
    (``x_t = (x_prev - c_m * out) / c_x``, see :func:`_ddim_coefficients`), whatever the
    ``prediction_type``: sampling back from the inverted latent with a model whose output
    does not depend on its input returns the start latent exactly.  For epsilon models this
    is null-text inversion's formula; for v-prediction, reading v as if at ``t - ratio``
    (diffusers' ``DDIMInverseScheduler``) is not DDIM's inverse and drifts (a constant
    model output gave a 24 % reconstruction error over 10 steps)."""
    ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    prev_t = t - ratio
    ac = scheduler.alphas_cumprod.to(x.device, torch.float32)
    a_prev = ac[prev_t] if prev_t >= 0 else scheduler.final_alpha_cumprod.to(x.device, torch.float32)
    c_x, c_m = _ddim_coefficients(scheduler.config.prediction_type, ac[t], a_prev)
    return ((x.float() - c_m * model_out.float()) / c_x).to(x.dtype)


@torch.no_grad()
def ddim_invert(unet, scheduler, latents: torch.Tensor, text_embeddings: torch.Tensor,
                steps: int) -> list[torch.Tensor]:
    """DDIM inversion with the conditional prediction only (guidance 1, as Direct
    Inversion does).  Returns ``steps + 1`` latents: ``[z_0, ..., z_T]``, where ``z_k`` is
    the latent the sampler should hold before denoising step ``steps - k``."""
    scheduler.set_timesteps(steps, device=latents.device)
    timesteps = scheduler.timesteps.flip(0)                     # ascending
    out = [latents]
    x = latents
    for t in timesteps:
        model_out = unet(x, t, encoder_hidden_states=text_embeddings).sample
        x = ddim_step_forward(scheduler, model_out, int(t), x)
        out.append(x)
    return out


# ------------------------------------------------------------------------- attention control
@dataclass
class P2PController:
    """What the P2P processors of one pass share.

    batch: ``B`` pairs; rows are four blocks of ``B`` (see module docstring).
    mapper, alphas: ``(B, T)`` from :func:`align_tokens` per pair.
    equalizer: ``(B, T)`` weights multiplied into the target's cross-attention during
        the replacement steps (reweighting; 1 = unchanged), or None.
    cross_steps / self_steps: number of first steps with cross / self replacement.
    self_min_tokens / self_max_tokens: self-attention is replaced at layers whose query
        count is at most ``self_max_tokens``.
    step: the denoising step being run (advanced by the caller after every step).
    blend_edited: local blend accumulates the target's cross-attention *after* this
        controller's replacement and reweighting (what the official P2P code stores, since it
        edits the stored maps in place), instead of the target's own maps.
    """

    batch: int
    mapper: torch.Tensor
    alphas: torch.Tensor
    cross_steps: int
    self_steps: int
    self_max_tokens: int
    equalizer: torch.Tensor | None = None
    step: int = 0
    calls: dict = field(default_factory=dict)   # (is_cross) -> count of edited layer calls (tests)
    # local blend: words (B, T) bool of the source / target captions, read at layers of blend_tokens queries
    blend_src: torch.Tensor | None = None
    blend_tgt: torch.Tensor | None = None
    blend_tokens: int = 0
    blend_sum: torch.Tensor | None = None        # (2, B, Nq) accumulated maps: source, target
    blend_edited: bool = False

    def active(self, is_cross: bool, n_query: int) -> bool:
        if is_cross:
            return self.step < self.cross_steps or (self.blend_tgt is not None and n_query == self.blend_tokens)
        return self.step < self.self_steps and n_query <= self.self_max_tokens

    def _record_blend(self, probs: torch.Tensor) -> None:
        b = self.batch
        src = probs[COND_SRC * b:(COND_SRC + 1) * b].float().mean(1)            # (B, Nq, T)
        tgt = probs[COND_TGT * b:(COND_TGT + 1) * b].float().mean(1)
        w_s = self.blend_src.to(probs.device, torch.float32)
        w_t = self.blend_tgt.to(probs.device, torch.float32)
        m = torch.stack([src @ w_s[:, :, None], tgt @ w_t[:, :, None]])[..., 0]  # (2, B, Nq)
        self.blend_sum = m if self.blend_sum is None else self.blend_sum + m

    def blend_mask(self, latent_hw: tuple[int, int], threshold: float) -> torch.Tensor | None:
        """P2P's local blend mask ``(B, 1, H, W)``: the words' accumulated maps, 3x3 max-pooled,
        upsampled to the latent grid, normalized by their maximum, thresholded; source | target."""
        if self.blend_sum is None:
            return None
        n = self.blend_sum.shape[-1]
        H, W = latent_hw
        f = int(round((H * W / n) ** 0.5))
        maps = self.blend_sum.reshape(2 * self.batch, 1, H // f, W // f)
        maps = F.max_pool2d(maps, 3, stride=1, padding=1)
        maps = F.interpolate(maps, size=(H, W), mode="nearest")
        maps = maps / maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None, None]
        m = (maps > threshold).reshape(2, self.batch, 1, H, W)
        return m[0] | m[1]

    def edit(self, probs: torch.Tensor, is_cross: bool) -> torch.Tensor:
        """Edit ``(rows, heads, Nq, K)`` probabilities in place of the target rows."""
        if not self.active(is_cross, probs.shape[2]):
            return probs
        rows = probs.shape[0]
        if rows != 4 * self.batch:
            raise RuntimeError(f"P2P: expected {4 * self.batch} U-Net rows (CFG x source/target), got {rows}")
        blend_layer = is_cross and self.blend_tgt is not None and probs.shape[2] == self.blend_tokens
        if blend_layer and (not self.blend_edited or self.step >= self.cross_steps):
            self._record_blend(probs)                # own maps (or no edit at this step)
        if is_cross and self.step >= self.cross_steps:
            return probs
        b = self.batch
        src = probs[COND_SRC * b:(COND_SRC + 1) * b]                 # (B, heads, Nq, K)
        tgt = probs[COND_TGT * b:(COND_TGT + 1) * b]
        if is_cross:
            mapper = self.mapper.to(probs.device)
            idx = mapper[:, None, None, :].expand(-1, src.shape[1], src.shape[2], -1)
            mapped = torch.gather(src, 3, idx)                         # source maps at the mapped tokens
            a = self.alphas.to(probs.device, probs.dtype)[:, None, None, :]
            new = mapped * a + tgt * (1 - a)
            if self.equalizer is not None:
                new = new * self.equalizer.to(probs.device, probs.dtype)[:, None, None, :]
        else:
            new = src
        self.calls[is_cross] = self.calls.get(is_cross, 0) + 1
        out = probs.clone()
        out[COND_TGT * b:(COND_TGT + 1) * b] = new
        if blend_layer and self.blend_edited:
            self._record_blend(out)
        return out


def explicit_attention(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                       edit=None):
    """diffusers' ``AttnProcessor2_0`` maths with explicit softmax probabilities, so that
    ``edit(probs (rows, heads, Nq, K)) -> probs`` can change them."""
    from .processors import attention_inputs, attention_output

    query, key, value, attention_mask, frame = attention_inputs(
        attn, hidden_states, encoder_hidden_states, attention_mask, temb)
    logits = query.float() @ key.float().transpose(-1, -2) * attn.scale
    if attention_mask is not None:
        logits = logits + attention_mask.float()
    probs = logits.softmax(-1)
    if edit is not None:
        probs = edit(probs)
    return attention_output(attn, probs.to(value.dtype) @ value, frame)


class P2PAttnProcessor:
    """Runs the processor it wraps unless the controller edits this layer at this step;
    then computes attention explicitly and lets the controller edit the probabilities."""

    def __init__(self, prev, controller: P2PController, name: str):
        self.prev = prev
        self.controller = controller
        self.name = name

    def edit_probs(self, probs: torch.Tensor, is_cross: bool) -> torch.Tensor:
        """Hook for a wrapping processor that computed ``(rows, heads, Nq, K)`` itself."""
        return self.controller.edit(probs, is_cross)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        n_query = hidden_states.shape[1] if hidden_states.ndim == 3 else \
            hidden_states.shape[2] * hidden_states.shape[3]
        is_cross = encoder_hidden_states is not None
        if not self.controller.active(is_cross, n_query):
            return self.prev(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        return explicit_attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                                  edit=lambda p: self.controller.edit(p, is_cross))


@contextmanager
def unwrapped_attention(unet) -> Iterator[None]:
    """Run the layers' own processors, without wrappers that accept inner control (LIME's):
    inversion is not part of the pass those wrappers observe."""
    previous = dict(unet.attn_processors)
    if any(getattr(p, "accepts_inner", False) for p in previous.values()):
        unet.set_attn_processor({n: (p.prev if getattr(p, "accepts_inner", False) else p)
                                 for n, p in previous.items()})
    try:
        yield
    finally:
        unet.set_attn_processor(previous)


@contextmanager
def p2p_attention(unet, controller: P2PController) -> Iterator[P2PController]:
    """Install :class:`P2PAttnProcessor` around every attention layer; restore on exit.

    Where a layer's processor is a wrapper that accepts inner control
    (``accepts_inner = True``, e.g. LIME's), P2P goes *under* it (``wrapper.prev``), so
    that the wrapper still sees the layer's inputs and can call :meth:`P2PAttnProcessor.edit_probs`."""
    previous = dict(unet.attn_processors)
    inner: dict[str, object] = {}
    installed = {}
    for n, p in previous.items():
        if getattr(p, "accepts_inner", False):
            inner[n] = p.prev
            p.prev = P2PAttnProcessor(p.prev, controller, n)
            installed[n] = p
        else:
            installed[n] = P2PAttnProcessor(p, controller, n)
    unet.set_attn_processor(installed)
    try:
        yield controller
    finally:
        for n, prev in inner.items():
            previous[n].prev = prev
        unet.set_attn_processor(previous)
