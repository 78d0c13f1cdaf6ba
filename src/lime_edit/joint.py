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

Nothing dense is built and every query row is computed once: an item without a region
is the stock computation, and for the others the rows outside the RoI are the stock
maths on those rows (equal to float precision), the RoI rows computed per item over the kept keys (``literal``) or with one attention call
whose value carries a text indicator column, so its output also holds each row's
text share (``text_mass``; the text block itself is small and computed explicitly).
The functions here take ``(B, N, heads, d)`` tensors (diffusers' dispatch layout).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

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


class JointAttnProcessor:
    """Wraps one FLUX-style joint-attention layer's stock processor (``FluxAttnProcessor``);
    inert (calls it unchanged) except at the capture step or a regularized step of its
    block.  The call signature is the stock one: diffusers' ``FluxAttention.forward``
    passes only the arguments a processor names, so a ``**kwargs`` wrapper would lose
    the rotary embeddings."""

    accepts_inner = False

    def __init__(self, prev, state: PassState, name: str, block: int):
        self.prev = prev
        self.state = state
        self.name = name
        self.block = block

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None) -> torch.Tensor:
        st = self.state
        st.levels_seen.add(self.block)
        capture = st.capturing and self.block in st.capture_levels
        regularize = st.regularizing and self.block in st.reg_levels
        if not (capture or regularize):
            return self.prev(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

        if type(self.prev) is not FluxAttnProcessor or attention_mask is not None:
            raise LimeEditError(f"attention layer {self.name} uses {type(self.prev).__name__}"
                                f"{' with an attention mask' if attention_mask is not None else ''}; LIME reads "
                                "and regularizes joint attention only with the stock FluxAttnProcessor")
        return self._attend(attn, hidden_states, encoder_hidden_states, image_rotary_emb, capture, regularize)

    def _attend(self, attn, hidden_states, encoder_hidden_states, image_rotary_emb, capture, regularize):
        # the stock FluxAttnProcessor's steps, with LIME's additions on the attention output
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        st = self.state
        query, key, value, e_query, e_key, e_value = _get_qkv_projections(attn, hidden_states,
                                                                           encoder_hidden_states)
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
        n_total = query.shape[1]
        n_target = st.latent_hw[0] * st.latent_hw[1]
        n_text = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else st.text_len
        if n_text is None or n_text + n_target > n_total:
            raise LimeEditError(f"{self.name}: {n_total} tokens cannot hold {n_target} target-image tokens "
                                f"after {n_text} text tokens")
        target = slice(n_text, n_text + n_target)
        scale = attn.head_dim ** -0.5

        def stock(q, k, v):                                                                # (b, N, H, d)
            return dispatch_attention_fn(q, k, v, attn_mask=None, backend=self.prev._attention_backend,
                                         parallel_config=self.prev._parallel_config)

        rows = st.roi_rows(1, query.device) if regularize else None                        # (B, Nt)
        if rows is None or capture:
            out = stock(query, key, value)
        else:   # each query row once: items without a region as stock, the others split below
            out = torch.empty_like(query)
            plain = (~rows.any(1)).nonzero()[:, 0]
            if plain.numel():
                out[plain] = stock(query[plain], key[plain], value[plain])
        if capture:
            b = st.batch
            maps = []
            for i in range(b):
                q_i, k_i, v_i = _bhnd(query[i:i + 1])[0], _bhnd(key[i:i + 1])[0], _bhnd(value[i:i + 1])[0]
                maps.append(text_probs(q_i[:, target], k_i, v_i, n_text, scale).mean(0))   # (Nt, T)
            h, w = st.latent_hw
            probs = torch.stack(maps)                                                      # (B, Nt, T)
            st.cross_probs.append((self.name, self.block, probs.transpose(1, 2).reshape(b, -1, h, w)))
        if regularize:
            if st.tokens.shape[1] != n_text:
                raise LimeEditError(f"{self.name}: {n_text} text tokens, token roles cover {st.tokens.shape[1]}")
            for i in range(out.shape[0]):
                idx = rows[i].nonzero()[:, 0]
                if not idx.numel():
                    continue
                q_i, k_i, v_i = _bhnd(query[i:i + 1])[0], _bhnd(key[i:i + 1])[0], _bhnd(value[i:i + 1])[0]
                inside = n_text + idx
                if not capture:                                # the rows outside the region: stock maths
                    outside = torch.ones(n_total, dtype=torch.bool, device=query.device)
                    outside[inside] = False
                    out[i, outside] = F.scaled_dot_product_attention(
                        q_i[None, :, outside], k_i[None], v_i[None], scale=scale)[0].transpose(0, 1)
                got = regularized_rows(q_i[:, inside], k_i, v_i, n_text, st.tokens[i],
                                       rule=st.rule, mode=st.mode, scale=scale)            # (H, Nr, d)
                out[i, inside] = got.transpose(0, 1).to(out.dtype)
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

    def _keep_context(self, rows: torch.Tensor) -> None:
        """Store the context-image tokens of the layer output as ``(B, C, h, w)``."""
        st = self.state
        h, w = st.latent_hw
        if rows.shape[1] != h * w:
            raise LimeEditError(f"{self.name}: {rows.shape[1]} context-image tokens, expected {h}x{w} (the "
                                "context image must have the target's size)")
        st.features.append((self.name, self.block, rows.detach().transpose(1, 2).reshape(rows.shape[0], -1, h, w)))


@contextmanager
def joint_attention(transformer, state: PassState, blocks: dict[str, int],
                    layers: tuple[str, ...] | None = None) -> Iterator[PassState]:
    """Install :class:`JointAttnProcessor` on the selected joint-attention layers
    (``blocks``: processor name -> block index); previous processors restored in ``finally``."""
    previous = dict(transformer.attn_processors)
    chosen = set(select_layers(list(previous), layers))
    transformer.set_attn_processor({
        name: (JointAttnProcessor(proc, state, name, blocks[name]) if name in chosen and name in blocks else proc)
        for name, proc in previous.items()})
    try:
        yield state
    finally:
        transformer.set_attn_processor(previous)
