"""LIME on joint attention (multimodal diffusion transformers: FLUX.1 Kontext, ...).

A joint-attention layer runs one softmax over the concatenation ``[text ; target
image ; context image]`` (text first): every image query attends to text AND image
keys.  LIME's two stages carry over as:

* **capture** (localization, one step): the layer's OUTPUT at the *context image*
  tokens (the clean input image, present at every step: the features clustered) and,
  for the *target image* queries, the head-averaged attention probabilities of the
  text keys *in the joint softmax* (the maps the instruction's words are read from);
* **regularize** (edit pass): for target-image queries inside the RoI, one of two
  rules (``LimeConfig.joint_rule``):

  - ``"text_mass"`` (default): the text block keeps its total probability and the
    unrelated keys' share moves to the kept words (in proportion to their own
    probabilities; in reward mode equally to the rewarded words); every image key's
    probability is unchanged.  Inside the text block this is exactly the U-Net rule.
  - ``"literal"``: the paper's rule applied to the joint logits (unrelated text
    logits set to -inf); the softmax renormalises over kept text AND image keys, so
    most of the freed mass goes to image keys, not to the instruction.  Reward mode's
    limit (+inf logits) gives the rewarded words all the attention.

  On a U-Net's cross-attention every key is text, so both rules are the same.

Nothing dense is built: the layer's stock attention runs as it is (so every row outside
the RoI, and every item without a region, is the stock computation bit for bit), and the
RoI rows are then recomputed per item and replaced, over the kept keys (``literal``) or
with one attention call whose value carries a text indicator column, so its output also
holds each row's text share (``text_mass``; the text block itself is small and computed
explicitly).
The functions here take ``(B, N, heads, d)`` tensors (diffusers' dispatch layout).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from .errors import LimeEditError
from .processors import PassState, select_layers

RULES = ("text_mass", "literal")


def _bhnd(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)            # (B, N, H, d) <-> (B, H, N, d)


def attention_with_text_share(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_text: int,
                              scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention ``(H, Nq, d)`` over all keys, and each row's total probability
    on the first ``n_text`` keys ``(H, Nq)``, from one ``scaled_dot_product_attention``
    call: the value gets an indicator column (1 on text keys), padded with q and k to a
    multiple of 8 so fused kernels still apply (zero padding leaves q.k unchanged)."""
    h, nk, d = k.shape
    pad = 8 - d % 8 if d % 8 else 8
    qp = F.pad(q, (0, pad))
    kp = F.pad(k, (0, pad))
    ind = torch.zeros(h, nk, pad, dtype=v.dtype, device=v.device)
    ind[:, :n_text, 0] = 1
    vp = torch.cat([v, ind], -1)
    out = F.scaled_dot_product_attention(qp[None], kp[None], vp[None], scale=scale)[0]
    dv = v.shape[-1]
    return out[..., :dv], out[..., dv].float()


def text_probs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_text: int, scale: float) -> torch.Tensor:
    """``(H, Nq, T)``: the joint softmax's probabilities of the text keys (text share x
    the softmax within the text block)."""
    _, share = attention_with_text_share(q, k, v, n_text, scale)
    inner = (q.float() @ k[:, :n_text].float().transpose(-1, -2) * scale).softmax(-1)
    return inner * share[..., None]


def regularized_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_text: int, tokens: torch.Tensor,
                     *, rule: str, mode: str, scale: float) -> torch.Tensor:
    """Attention output ``(H, Nr, d)`` of RoI query rows ``q`` ``(H, Nr, d)`` of one item
    under LIME's rule (module docstring). ``tokens`` ``(T,)`` bool: the kept (penalize)
    or rewarded (reward) text positions; ``k``/``v`` ``(H, Nk, d)`` hold text first."""
    tokens = tokens.to(q.device)
    if not tokens.any():                       # nothing kept: the row is left as it is
        return F.scaled_dot_product_attention(q[None], k[None], v[None], scale=scale)[0]
    text_v = v[:, :n_text]
    if mode == "reward":
        w = tokens.to(v.dtype) / tokens.sum()
        vbar = torch.einsum("t,htd->hd", w, text_v)[:, None]                        # (H, 1, d)
        if rule == "literal":                  # +inf logits: all attention on the rewarded words
            return vbar.expand(q.shape[0], q.shape[1], -1).clone()
        target = vbar.float()
    if rule == "literal":
        keys = torch.cat([tokens, torch.ones(k.shape[1] - n_text, dtype=torch.bool, device=tokens.device)])
        return F.scaled_dot_product_attention(q[None], k[None, :, keys], v[None, :, keys], scale=scale)[0]
    out, share = attention_with_text_share(q, k, v, n_text, scale)
    logits = q.float() @ k[:, :n_text].float().transpose(-1, -2) * scale              # (H, Nr, T)
    inner = logits.softmax(-1)
    if mode != "reward":
        target = logits.masked_fill(~tokens, float("-inf")).softmax(-1) @ text_v.float()
    # out = share * (text part) + (image part): swap the text part for the target's
    return (out.float() + share[..., None] * (target - inner @ text_v.float())).to(out.dtype)


class _JointLime:
    """What LIME does inside one joint-attention layer, whatever the family: given the
    joint ``query``/``key``/``value`` ``(B, N, H, d)`` (text first, then the target image,
    then the context image) it returns the attention output ``(B, N, H, d)``, capturing
    (text probabilities of the target queries) and regularizing (RoI rows) as
    :class:`~lime_edit.processors.PassState` says.  ``text_valid`` ``(B, T)`` bool marks
    the text keys that exist (a padded batch's key mask; None: all); a missing key is
    dropped from that item's computations, which is what the mask means.

    Subclasses are the families' processors: each has its stock processor's exact call
    signature (diffusers passes a processor only the arguments it names, so a
    ``**kwargs`` wrapper would silently lose the rotary embeddings or the key mask) and
    does the family's projections around :meth:`_lime`."""

    accepts_inner = False
    #: the diffusers processor class this one reproduces (checked before acting)
    stock_class: type | None = None

    def __init__(self, prev, state: PassState, name: str, block: int):
        self.prev = prev
        self.state = state
        self.name = name
        self.block = block

    def _acting(self) -> tuple[bool, bool]:
        st = self.state
        st.levels_seen.add(self.block)
        if st.forward_name not in (None, "cond"):       # the negative prompt's forward: stock
            return False, False
        return (st.capturing and self.block in st.capture_levels,
                st.regularizing and self.block in st.reg_levels)

    def _check_stock(self, why: str = "") -> None:
        if type(self.prev) is not self.stock_class or why:
            raise LimeEditError(f"attention layer {self.name} uses {type(self.prev).__name__}{why}; LIME reads "
                                f"and regularizes joint attention only with the stock "
                                f"{self.stock_class.__name__}")

    def _lime(self, query, key, value, n_text: int, text_valid, stock, capture: bool,
              regularize: bool) -> torch.Tensor:
        st = self.state
        n_total = query.shape[1]
        n_target = st.latent_hw[0] * st.latent_hw[1]
        if n_text + n_target > n_total:
            raise LimeEditError(f"{self.name}: {n_total} tokens cannot hold {n_target} target-image tokens "
                                f"after {n_text} text tokens")
        target = slice(n_text, n_text + n_target)
        scale = query.shape[-1] ** -0.5

        def item(i):                 # (H, N_i, d) with the item's missing text keys dropped
            q_i, k_i, v_i = _bhnd(query[i:i + 1])[0], _bhnd(key[i:i + 1])[0], _bhnd(value[i:i + 1])[0]
            if text_valid is None or bool(text_valid[i].all()):
                return q_i, k_i, v_i, n_text, None
            keys = torch.cat([text_valid[i], torch.ones(n_total - n_text, dtype=torch.bool,
                                                        device=text_valid.device)])
            return q_i, k_i[:, keys], v_i[:, keys], int(text_valid[i].sum()), text_valid[i]

        rows = st.roi_rows(1, query.device) if regularize else None                       # (B, Nt)
        # the stock computation for every row, in one call; the RoI rows are then replaced
        # (recomputing those few rows costs less than gathering and scattering all the others)
        out = stock(query, key, value, slice(None))
        if capture:
            maps = []
            for i in range(st.batch):
                q_i, k_i, v_i, t_i, valid = item(i)
                p = text_probs(q_i[:, target], k_i, v_i, t_i, scale).mean(0)                  # (Nt, t_i)
                if valid is not None:
                    p = p.new_zeros(p.shape[0], n_text).index_copy_(1, valid.nonzero()[:, 0], p)
                maps.append(p)
            h, w = st.latent_hw
            probs = torch.stack(maps)                                                      # (B, Nt, T)
            st.cross_probs.append((self.name, self.block, probs.transpose(1, 2).reshape(st.batch, -1, h, w)))
        if regularize:
            if st.tokens.shape[1] != n_text:
                raise LimeEditError(f"{self.name}: {n_text} text tokens, token roles cover {st.tokens.shape[1]}")
            for i in range(out.shape[0]):
                idx = rows[i].nonzero()[:, 0]
                if not idx.numel():
                    continue
                q_i, k_i, v_i, t_i, valid = item(i)
                tokens = st.tokens[i] if valid is None else st.tokens[i].to(valid.device)[valid]
                inside = n_text + idx
                got = regularized_rows(q_i[:, inside], k_i, v_i, t_i, tokens,
                                       rule=st.rule, mode=st.mode, scale=scale)            # (H, Nr, d)
                out[i, inside] = got.transpose(0, 1).to(out.dtype)
        return out

    def _keep_context(self, rows: torch.Tensor) -> None:
        """Store the context-image tokens of the layer output as ``(B, C, h, w)`` on the
        context image's own grid (``state.context_hw``; the target's when None)."""
        st = self.state
        h, w = st.context_hw or st.latent_hw
        if rows.shape[1] != h * w:
            raise LimeEditError(f"{self.name}: {rows.shape[1]} context-image tokens, expected {h}x{w}")
        st.features.append((self.name, self.block, rows.detach().transpose(1, 2).reshape(rows.shape[0], -1, h, w)))


class JointAttnProcessor(_JointLime):
    """FLUX's joint attention (``FluxAttnProcessor``: FLUX.1 Kontext's double-stream
    blocks with separate text projections, single-stream blocks on the concatenation);
    inert (calls the stock processor unchanged) except at the capture step or a
    regularized step of its block."""

    @property
    def stock_class(self):
        from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

        return FluxAttnProcessor

    @staticmethod
    def _projections(attn, hidden_states, encoder_hidden_states):
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        return _get_qkv_projections(attn, hidden_states, encoder_hidden_states)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None) -> torch.Tensor:
        capture, regularize = self._acting()
        if not (capture or regularize):
            return self.prev(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        self._check_stock(" with an attention mask" if attention_mask is not None else "")
        # the stock FluxAttnProcessor's steps, with LIME's additions on the attention output
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb

        st = self.state
        query, key, value, e_query, e_key, e_value = self._projections(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        if attn.added_kv_proj_dim is not None:
            e_query = attn.norm_added_q(e_query.unflatten(-1, (-1, attn.head_dim)))
            e_key = attn.norm_added_k(e_key.unflatten(-1, (-1, attn.head_dim)))
            e_value = e_value.unflatten(-1, (-1, attn.head_dim))
            query = torch.cat([e_query, query], dim=1)
            key = torch.cat([e_key, key], dim=1)
            value = torch.cat([e_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        n_text = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else st.text_len
        if n_text is None:
            raise LimeEditError(f"{self.name}: the number of text tokens is unknown")
        n_target = st.latent_hw[0] * st.latent_hw[1]

        def stock(q, k, v, rows):                                                          # (b, N, H, d)
            return dispatch_attention_fn(q, k, v, attn_mask=None, backend=self.prev._attention_backend,
                                         parallel_config=self.prev._parallel_config)

        out = self._lime(query, key, value, n_text, None, stock, capture, regularize)
        hidden = out.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is not None:
            e_hidden, hidden = hidden.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden.shape[1] - encoder_hidden_states.shape[1]], dim=1)
            hidden = attn.to_out[1](attn.to_out[0](hidden.contiguous()))
            e_hidden = attn.to_add_out(e_hidden.contiguous())
            if capture:
                self._keep_context(hidden[:, n_target:])
            return hidden, e_hidden
        if capture:
            self._keep_context(hidden[:, n_text + n_target:])
        return hidden


class Flux2JointAttnProcessor(JointAttnProcessor):
    """FLUX.2's double-stream joint attention (``Flux2AttnProcessor``): FLUX.1's steps with
    FLUX.2's projections (no bias, one fused-or-not QKV) and output layers."""

    @property
    def stock_class(self):
        from diffusers.models.transformers.transformer_flux2 import Flux2AttnProcessor

        return Flux2AttnProcessor

    @staticmethod
    def _projections(attn, hidden_states, encoder_hidden_states):
        from diffusers.models.transformers.transformer_flux2 import _get_qkv_projections

        return _get_qkv_projections(attn, hidden_states, encoder_hidden_states)


class Flux2SingleJointAttnProcessor(_JointLime):
    """FLUX.2's single-stream blocks (``Flux2ParallelSelfAttnProcessor``): one fused
    projection gives Q/K/V and the MLP input of the concatenation ``[text ; image]``;
    the output projection takes attention and MLP together, so the features read at the
    context tokens are the block's whole parallel output there."""

    @property
    def stock_class(self):
        from diffusers.models.transformers.transformer_flux2 import Flux2ParallelSelfAttnProcessor

        return Flux2ParallelSelfAttnProcessor

    def __call__(self, attn, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: torch.Tensor | None = None) -> torch.Tensor:
        capture, regularize = self._acting()
        if not (capture or regularize):
            return self.prev(attn, hidden_states, attention_mask, image_rotary_emb)
        self._check_stock(" with an attention mask" if attention_mask is not None else "")
        # the stock Flux2ParallelSelfAttnProcessor's steps, with LIME's additions on the attention output
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb

        st = self.state
        fused = attn.to_qkv_mlp_proj(hidden_states)
        qkv_dim = 3 * attn.inner_dim
        mlp_dim = attn.mlp_hidden_dim * attn.mlp_mult_factor
        local_qkv = fused.shape[-1] * qkv_dim // (qkv_dim + mlp_dim)
        qkv, mlp = torch.split(fused, [local_qkv, fused.shape[-1] - local_qkv], dim=-1)
        query, key, value = (t.unflatten(-1, (-1, attn.head_dim)) for t in qkv.chunk(3, dim=-1))
        query, key = attn.norm_q(query), attn.norm_k(key)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        n_text = st.text_len
        if n_text is None:
            raise LimeEditError(f"{self.name}: the number of text tokens is unknown")

        def stock(q, k, v, rows):
            return dispatch_attention_fn(q, k, v, attn_mask=None, backend=self.prev._attention_backend,
                                         parallel_config=self.prev._parallel_config)

        out = self._lime(query, key, value, n_text, None, stock, capture, regularize)
        hidden = out.flatten(2, 3).to(query.dtype)
        hidden = attn.to_out(torch.cat([hidden, attn.mlp_act_fn(mlp)], dim=-1))
        if capture:
            self._keep_context(hidden[:, n_text + st.latent_hw[0] * st.latent_hw[1]:])
        return hidden


class QwenJointAttnProcessor(_JointLime):
    """Qwen-Image's joint attention (``QwenDoubleStreamAttnProcessor2_0``: text and image
    streams projected separately, complex RoPE on both, one softmax over
    ``[text ; image]`` with the text keys of a padded batch hidden by
    ``encoder_hidden_states_mask``).  The image stream is ``[target ; context]``."""

    @property
    def stock_class(self):
        from diffusers.models.transformers.transformer_qwenimage import QwenDoubleStreamAttnProcessor2_0

        return QwenDoubleStreamAttnProcessor2_0

    def __call__(self, attn, hidden_states: torch.FloatTensor, encoder_hidden_states: torch.FloatTensor = None,
                 encoder_hidden_states_mask: torch.FloatTensor = None, attention_mask: torch.FloatTensor | None = None,
                 image_rotary_emb: torch.Tensor | None = None) -> torch.FloatTensor:
        capture, regularize = self._acting()
        if not (capture or regularize):
            return self.prev(attn, hidden_states, encoder_hidden_states, encoder_hidden_states_mask,
                             attention_mask, image_rotary_emb)
        self._check_stock(" with an attention mask" if attention_mask is not None else "")
        if encoder_hidden_states is None:
            raise LimeEditError(f"{self.name}: no text stream")
        # the stock QwenDoubleStreamAttnProcessor2_0's steps, with LIME's additions on the attention output
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

        head_dim = attn.inner_dim // attn.heads
        n_text = encoder_hidden_states.shape[1]
        img_q, img_k, img_v = (f(hidden_states).unflatten(-1, (-1, head_dim)) for f in (attn.to_q, attn.to_k, attn.to_v))
        txt_q, txt_k, txt_v = (f(encoder_hidden_states).unflatten(-1, (-1, head_dim))
                               for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        if attn.norm_q is not None:
            img_q = attn.norm_q(img_q)
        if attn.norm_k is not None:
            img_k = attn.norm_k(img_k)
        if attn.norm_added_q is not None:
            txt_q = attn.norm_added_q(txt_q)
        if attn.norm_added_k is not None:
            txt_k = attn.norm_added_k(txt_k)
        if image_rotary_emb is not None:
            img_freqs, txt_freqs = image_rotary_emb
            img_q = apply_rotary_emb_qwen(img_q, img_freqs, use_real=False)
            img_k = apply_rotary_emb_qwen(img_k, img_freqs, use_real=False)
            txt_q = apply_rotary_emb_qwen(txt_q, txt_freqs, use_real=False)
            txt_k = apply_rotary_emb_qwen(txt_k, txt_freqs, use_real=False)
        query, key, value = torch.cat([txt_q, img_q], 1), torch.cat([txt_k, img_k], 1), torch.cat([txt_v, img_v], 1)
        valid = encoder_hidden_states_mask.bool() if encoder_hidden_states_mask is not None else None

        def stock(q, k, v, rows):                                                          # (b, N, H, d)
            mask = None
            if valid is not None:
                m = valid[rows]
                mask = torch.cat([m, torch.ones(m.shape[0], q.shape[1] - n_text, dtype=torch.bool,
                                                device=m.device)], 1)[:, None, None, :]
            return dispatch_attention_fn(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False,
                                         backend=self.prev._attention_backend,
                                         parallel_config=self.prev._parallel_config)

        out = self._lime(query, key, value, n_text, valid, stock, capture, regularize)
        joint = out.flatten(2, 3).to(query.dtype)
        txt_out, img_out = joint[:, :n_text], joint[:, n_text:]
        img_out = attn.to_out[0](img_out.contiguous())
        if len(attn.to_out) > 1:
            img_out = attn.to_out[1](img_out)
        txt_out = attn.to_add_out(txt_out.contiguous())
        if capture:
            self._keep_context(img_out[:, self.state.latent_hw[0] * self.state.latent_hw[1]:])
        return img_out, txt_out


def _processor_for(processor, name: str) -> type[_JointLime]:
    return processor if isinstance(processor, type) else processor(name)


@contextmanager
def joint_attention(transformer, state: PassState, blocks: dict[str, int], layers: tuple[str, ...] | None = None,
                    processor: type[_JointLime] | Callable[[str], type[_JointLime]] = JointAttnProcessor
                    ) -> Iterator[PassState]:
    """Install ``processor`` (a :class:`_JointLime` class, or a function of the layer name
    giving one) on the selected joint-attention layers (``blocks``: processor name ->
    block index); previous processors restored in ``finally``.  The pipeline names each transformer forward (``cache_context("cond")``
    / ``("uncond")``, true classifier-free guidance): ``state.forward_name`` follows it,
    and LIME acts in the conditional forward only (the negative prompt's forward runs
    stock)."""
    previous = dict(transformer.attn_processors)
    chosen = set(select_layers(list(previous), layers))
    transformer.set_attn_processor({
        name: (_processor_for(processor, name)(proc, state, name, blocks[name])
               if name in chosen and name in blocks else proc)
        for name, proc in previous.items()})
    named = hasattr(transformer, "cache_context")
    if named:
        stock_context = transformer.cache_context

        @contextmanager
        def cache_context(name, *args, **kwargs):
            state.forward_name = name
            try:
                with stock_context(name, *args, **kwargs):
                    yield
            finally:
                state.forward_name = None

        transformer.cache_context = cache_context
    try:
        yield state
    finally:
        if named:
            del transformer.cache_context
        transformer.set_attn_processor(previous)
