"""MultiMAE-style multi-modal masked autoencoder on timm ViT blocks (a plain ``nn.Module``).

One input adapter per modality turns its image into patch tokens (RGB and depth: a linear patch
projection, timm's ``PatchEmbed``; semantic map: a class embedding followed by a patch projection).
Every modality gets the same fixed 2D sine-cosine position embedding. Masking draws, per sample, the
share of the ``num_visible`` visible tokens each modality keeps from a Dirichlet(alpha) distribution
and rounds it so the counts sum to exactly ``num_visible``. The shared encoder (timm ``Block``s) sees
only the visible tokens plus one global token. Each task's decoder builds a query for every patch of
its modality (its own visible tokens where it has them, a mask token elsewhere, plus position), lets
the queries cross-attend to all encoded tokens, runs ``decoder_depth`` self-attention blocks and
predicts that modality's pixels per patch. Losses are on masked patches only.

The RGB path (patch embedding, position embedding, global token, blocks, final norm) is exactly a
timm ``VisionTransformer`` with ``class_token=True, no_embed_class=True``: see
``timm_encoder_state_dict`` and ``timm_kwargs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm, Mlp, PatchEmbed
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from models.compile import compile_in_place
from utils.errors import ConfigError, DataError

#: modality -> number of input channels of its image (semseg: an integer class map)
SUPPORTED_MODALITIES = ("rgb", "depth", "semseg")


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), patches in row-major order, pixels (py, px, c) within a patch."""
    b, c, h, w = x.shape
    p = patch_size
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, N, p*p*C) -> (B, C, H, W)."""
    b = x.shape[0]
    gh, gw = grid
    p = patch_size
    x = x.reshape(b, gh, gw, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, gh * p, gw * p)


def allocate_visible(proportions: torch.Tensor, total: int, capacity: int) -> torch.Tensor:
    """Integer visible-token counts per (sample, modality) that sum to exactly ``total``.

    ``proportions`` (B, M) rows on the simplex. Largest-remainder rounding of ``proportions * total``,
    then any count above ``capacity`` (tokens a modality has) is capped and its excess handed to the
    modalities with room, largest share first.
    """
    b, m = proportions.shape
    if not 0 <= total <= m * capacity:
        raise ValueError(f"cannot keep {total} visible tokens out of {m} x {capacity}")
    exact = proportions * total
    counts = exact.floor().long()
    deficit = total - counts.sum(1, keepdim=True)
    order = torch.argsort(torch.argsort(exact - counts, dim=1, descending=True), dim=1)
    counts = counts + (order < deficit).long()
    excess = (counts - capacity).clamp(min=0).sum(1)
    counts = counts.clamp(max=capacity)
    for idx in torch.argsort(proportions, dim=1, descending=True).T:  # largest share first
        room = capacity - counts.gather(1, idx[:, None])[:, 0]
        add = torch.minimum(room, excess)
        counts.scatter_add_(1, idx[:, None], add[:, None])
        excess = excess - add
    return counts


class SemsegAdapter(nn.Module):
    """Semantic map (B, H, W) of class ids -> class embedding per pixel -> patch tokens (B, N, D)."""

    def __init__(self, num_classes: int, class_emb_dim: int, image_size: int, patch_size: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.class_emb = nn.Embedding(num_classes, class_emb_dim)
        self.proj = PatchEmbed(image_size, patch_size, class_emb_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= self.num_classes:
            bad = hi if hi >= self.num_classes else lo
            raise DataError(
                f"the semantic map holds class id {bad}, outside model.num_classes={self.num_classes} "
                f"(valid ids 0..{self.num_classes - 1})."
            )
        return self.proj(self.class_emb(x).permute(0, 3, 1, 2))


class CrossAttentionDecoder(nn.Module):
    """Output adapter of one task: full query grid cross-attends to the encoded tokens, then
    ``depth`` self-attention blocks, then a linear map to ``out_dim`` values per patch."""

    def __init__(
        self,
        encoder_dim: int,
        dim: int,
        depth: int,
        num_heads: int,
        num_patches: int,
        grid: tuple[int, int],
        out_dim: int,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.proj_context = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", build_sincos2d_pos_embed(list(grid), dim)[None], persistent=False)
        self.query_norm = LayerNorm(dim)
        self.context_norm = LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.mlp_norm = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)
        self.num_patches = num_patches
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(
        self, encoded: torch.Tensor, ids_keep: torch.Tensor, own_offset: int | None, own_visible: torch.Tensor
    ) -> torch.Tensor:
        """encoded (B, 1+K, De): global token then the K visible tokens whose flat ids are ``ids_keep``;
        ``own_offset``: where this task's modality starts in the flat token order (None: not an input);
        ``own_visible`` (B, N) bool. Returns (B, N, out_dim)."""
        b = encoded.shape[0]
        context = self.proj_context(encoded)
        queries = self.mask_token.expand(b, self.num_patches, -1)
        if own_offset is not None:
            own = ids_keep - own_offset
            inside = (own >= 0) & (own < self.num_patches)
            slot = torch.where(inside, own, torch.full_like(own, self.num_patches))  # dump row N
            grid = context.new_zeros(b, self.num_patches + 1, context.shape[-1])
            grid = grid.scatter(1, slot[..., None].expand(-1, -1, context.shape[-1]), context[:, 1:])
            queries = torch.where(own_visible[..., None], grid[:, : self.num_patches], queries)
        x = queries + self.pos_embed
        ctx = self.context_norm(context)
        x = x + self.cross_attn(self.query_norm(x), ctx, ctx, need_weights=False)[0]
        x = x + self.mlp(self.mlp_norm(x))
        x = self.blocks(x)
        return self.head(self.norm(x))


@dataclass
class MultiMAEOutput:
    """``preds[task]`` (B, N, values per patch); ``masked[task]`` (B, N) bool, True = hidden from the
    encoder (the loss is taken there); ``features`` (B, 1+K, D) the encoder output tokens;
    ``task_features[task]``: with ``forward(..., detach_features=True)``, the detached copy of ``features``
    the task's decoder read (else None)."""

    preds: dict[str, torch.Tensor]
    masked: dict[str, torch.Tensor]
    features: torch.Tensor
    ids_keep: torch.Tensor
    task_features: dict[str, torch.Tensor] | None = None


def _check_options(
    modalities: tuple[str, ...],
    image_size: int,
    patch_size: int,
    embed_dim: int,
    num_heads: int,
    decoder_dim: int,
    decoder_heads: int,
) -> None:
    """The shape options of :class:`MultiMAE`, each failing with its ``model.`` key."""
    unknown = [m for m in modalities if m not in SUPPORTED_MODALITIES]
    if unknown or not modalities or len(set(modalities)) != len(modalities):
        raise ConfigError(
            f"model.modalities={list(modalities)} must be distinct names among "
            f"{', '.join(SUPPORTED_MODALITIES)} (got {unknown[0]!r})."
            if unknown
            else f"model.modalities={list(modalities)} must be a non-empty list of distinct names."
        )
    if image_size % patch_size:
        raise ConfigError(f"model.image_size={image_size} is not divisible by model.patch_size={patch_size}.")
    for key, dim, heads in (("embed_dim", embed_dim, num_heads), ("decoder_dim", decoder_dim, decoder_heads)):
        if dim % 4 or dim % heads:
            raise ConfigError(
                f"model.{key}={dim} must be divisible by 4 (2D sine-cosine position embedding) "
                f"and by its number of heads ({heads})."
            )


class MultiMAE(nn.Module):
    """Multi-modal masked autoencoder: adapters -> visible tokens -> shared encoder -> task decoders.

    Args:
        modalities: input modalities, also the reconstruction tasks (subset of rgb, depth, semseg).
        image_size / patch_size: square images; ``image_size`` must be divisible by ``patch_size``.
        embed_dim / depth / num_heads / mlp_ratio: the shared ViT encoder.
        decoder_dim / decoder_depth / decoder_heads: each task decoder (cross-attention + blocks).
        num_visible: total visible tokens per sample over all modalities (MultiMAE: 1/6 of all).
        dirichlet_alpha: concentration of the Dirichlet over modalities (1.0 = MultiMAE).
        num_classes / class_emb_dim: semantic map classes and the width of their embedding.
        depth_mean / depth_std: depth (metres) is standardised with these before input and L1 target.
        norm_pix_loss: RGB target is normalised per patch (mean 0, variance 1), as in MAE.
        timm_name: timm model name the exported encoder loads into (with ``timm_kwargs()``).
        compile: compile the encoder blocks in place with ``torch.compile`` (:func:`models.compile.compile_in_place`).
    """

    def __init__(
        self,
        modalities: Sequence[str] = SUPPORTED_MODALITIES,
        image_size: int = 64,
        patch_size: int = 8,
        embed_dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        decoder_dim: int = 64,
        decoder_depth: int = 1,
        decoder_heads: int = 4,
        num_visible: int = 48,
        dirichlet_alpha: float = 1.0,
        num_classes: int = 10,
        class_emb_dim: int = 8,
        depth_mean: float = 4.0,
        depth_std: float = 2.0,
        norm_pix_loss: bool = True,
        timm_name: str = "vit_base_patch16_224",
        compile: bool = False,
    ) -> None:
        super().__init__()
        modalities = tuple(modalities)
        _check_options(modalities, image_size, patch_size, embed_dim, num_heads, decoder_dim, decoder_heads)
        grid = (image_size // patch_size, image_size // patch_size)
        self.num_patches = grid[0] * grid[1]
        if not 1 <= num_visible <= len(modalities) * self.num_patches:
            raise ConfigError(
                f"model.num_visible={num_visible} must be between 1 and the {len(modalities)} x "
                f"{self.num_patches} tokens of all modalities."
            )
        if dirichlet_alpha <= 0:
            raise ConfigError(f"model.dirichlet_alpha={dirichlet_alpha} must be positive.")
        self.modalities, self.tasks = modalities, modalities
        self.image_size, self.patch_size, self.grid = image_size, patch_size, grid
        self.embed_dim, self.depth, self.num_heads, self.mlp_ratio = embed_dim, depth, num_heads, mlp_ratio
        self.num_visible, self.dirichlet_alpha = num_visible, float(dirichlet_alpha)
        self.num_classes, self.norm_pix_loss = num_classes, norm_pix_loss
        self.depth_mean, self.depth_std = float(depth_mean), float(depth_std)
        self.timm_name = timm_name
        self._build_encoder(class_emb_dim)
        self._build_decoders(decoder_dim, decoder_depth, decoder_heads)
        self._init_parameters()
        self.compiled = bool(compile)
        if self.compiled:
            compile_in_place(self.blocks)

    def _build_encoder(self, class_emb_dim: int) -> None:
        """The input adapters (one per modality), the fixed 2D sine-cosine position embedding, the global
        token and the shared ViT blocks with their final norm."""
        adapters = {}
        for m in self.modalities:
            if m == "semseg":
                adapters[m] = SemsegAdapter(
                    self.num_classes, class_emb_dim, self.image_size, self.patch_size, self.embed_dim
                )
            else:
                adapters[m] = PatchEmbed(
                    self.image_size, self.patch_size, 3 if m == "rgb" else 1, self.embed_dim
                )
        self.input_adapters = nn.ModuleDict(adapters)
        self.register_buffer(
            "pos_embed", build_sincos2d_pos_embed(list(self.grid), self.embed_dim)[None], persistent=False
        )
        self.global_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        self.blocks = nn.Sequential(
            *[Block(self.embed_dim, self.num_heads, self.mlp_ratio, qkv_bias=True) for _ in range(self.depth)]
        )
        self.norm = LayerNorm(self.embed_dim)

    def _build_decoders(self, decoder_dim: int, decoder_depth: int, decoder_heads: int) -> None:
        """One cross-attention decoder per task, predicting every patch's values (3 RGB, 1 depth or one
        logit per class, per pixel)."""
        out_dims = {"rgb": 3, "depth": 1, "semseg": self.num_classes}
        self.decoders = nn.ModuleDict(
            {
                t: CrossAttentionDecoder(
                    self.embed_dim,
                    decoder_dim,
                    decoder_depth,
                    decoder_heads,
                    self.num_patches,
                    self.grid,
                    out_dims[t] * self.patch_size * self.patch_size,
                )
                for t in self.tasks
            }
        )

    def _init_parameters(self) -> None:
        """MAE's initialisation: Xavier-uniform linear layers, a small normal global token, and the patch
        projections initialised like a linear layer."""
        self.apply(self._init_weights)
        nn.init.normal_(self.global_token, std=0.02)
        for adapter in self.input_adapters.values():  # patch projections like a linear layer (MAE)
            proj = adapter.proj.proj if isinstance(adapter, SemsegAdapter) else adapter.proj
            nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # ----------------------------------------------------------------------------------- encoder
    def normalise_depth(self, depth: torch.Tensor) -> torch.Tensor:
        return (depth - self.depth_mean) / self.depth_std

    def tokenize(self, inputs: Mapping[str, torch.Tensor], modalities: Sequence[str]) -> torch.Tensor:
        """Patch tokens with position embedding, modalities concatenated: (B, len(modalities)*N, D)."""
        tokens = []
        for m in modalities:
            if m not in inputs:
                raise DataError(
                    f"model.modalities names {m!r} but the batch provides only {sorted(inputs)} "
                    "(check data.modalities)."
                )
            x = inputs[m]
            if m == "depth":
                x = self.normalise_depth(x)
            tokens.append(self.input_adapters[m](x) + self.pos_embed)
        return torch.cat(tokens, dim=1)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Global token + the given tokens through the shared encoder: (B, 1+K, D)."""
        x = torch.cat([self.global_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return self.norm(self.blocks(x))

    def forward_features(
        self, inputs: Mapping[str, torch.Tensor] | torch.Tensor, modalities: Sequence[str] = ("rgb",)
    ) -> torch.Tensor:
        """All patches of ``modalities`` visible (fine-tuning): (B, 1 + len(modalities)*N, D).

        A bare tensor is taken as RGB. With RGB only this equals timm's ``forward_features``."""
        if isinstance(inputs, torch.Tensor):
            inputs = {"rgb": inputs}
        return self.encode(self.tokenize(inputs, modalities))

    # ----------------------------------------------------------------------------------- masking
    def sample_visible(self, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(B, M, N) bool: per sample, Dirichlet shares of ``num_visible`` tokens, random patches."""
        m, n = len(self.modalities), self.num_patches
        alpha = torch.full((m,), self.dirichlet_alpha, device=device)
        shares = torch.distributions.Dirichlet(alpha).sample((batch_size,))
        counts = allocate_visible(shares, self.num_visible, n)
        rank = torch.argsort(torch.argsort(torch.rand(batch_size, m, n, device=device), dim=-1), dim=-1)
        return rank < counts[..., None]

    # ----------------------------------------------------------------------------------- forward
    def forward(
        self,
        inputs: Mapping[str, torch.Tensor],
        visible: torch.Tensor | None = None,
        detach_features: bool = False,
    ) -> MultiMAEOutput:
        """One encoder pass over the visible tokens of all modalities, then every task decoder.

        ``visible`` (B, M, N) bool overrides the Dirichlet masking; each row must keep the same
        number of tokens. ``detach_features``: each decoder reads its own detached copy of the encoder output
        (``output.task_features``), so a task's loss stops there; the caller then back-propagates into the
        encoder itself with ``output.features.backward(gradient)`` (how every task's gradient w.r.t. the
        features comes out of one backward through the decoders)."""
        tokens = self.tokenize(inputs, self.modalities)
        b = tokens.shape[0]
        if visible is None:
            visible = self.sample_visible(b, tokens.device)
        flat = visible.flatten(1)
        k = int(flat[0].sum())
        if not bool((flat.sum(1) == k).all()):
            raise ValueError("every sample must keep the same number of visible tokens")
        ids_keep = torch.argsort((~flat).to(torch.int8), dim=1, stable=True)[:, :k]
        x = tokens.gather(1, ids_keep[..., None].expand(-1, -1, tokens.shape[-1]))
        features = self.encode(x)
        preds, masked = {}, {}
        copies = {t: features.detach().requires_grad_() for t in self.decoders} if detach_features else None
        for t, decoder in self.decoders.items():
            i = self.modalities.index(t)
            read = copies[t] if copies is not None else features
            preds[t] = decoder(read, ids_keep, i * self.num_patches, visible[:, i])
            masked[t] = ~visible[:, i]
        return MultiMAEOutput(preds, masked, features, ids_keep, copies)

    # ----------------------------------------------------------------------------------- losses
    def targets(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-patch targets: rgb (B, N, p*p*3) normalised per patch if ``norm_pix_loss``; depth
        (B, N, p*p) standardised; semseg (B, N, p*p) class ids."""
        p = self.patch_size
        out = {}
        for t in (t for t in self.tasks if t in inputs):
            if t == "rgb":
                target = patchify(inputs["rgb"], p)
                if self.norm_pix_loss:
                    mean = target.mean(-1, keepdim=True)
                    var = target.var(-1, keepdim=True)
                    target = (target - mean) / (var + 1e-6).sqrt()
            elif t == "depth":
                target = patchify(self.normalise_depth(inputs["depth"]), p)
            else:
                target = patchify(inputs["semseg"][:, None], p)
            out[t] = target
        return out

    def losses(
        self, output: MultiMAEOutput, inputs: Mapping[str, torch.Tensor]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``task -> (sum, count)`` over the pixels (values) of masked patches only: MSE for rgb, L1 for
        depth, cross-entropy for semseg. ``sum / count`` is the per-element mean loss."""
        targets = self.targets(inputs)
        out = {}
        for t, pred in output.preds.items():
            mask = output.masked[t].to(pred.dtype)
            target = targets[t]
            if t == "rgb":
                per_patch = (pred - target).pow(2).sum(-1)
            elif t == "depth":
                per_patch = (pred - target).abs().sum(-1)
            else:
                b, n, _ = pred.shape
                logits = pred.reshape(b, n, -1, self.num_classes)
                per_patch = (
                    F.cross_entropy(
                        logits.reshape(-1, self.num_classes), target.reshape(-1), reduction="none"
                    )
                    .view(b, n, -1)
                    .sum(-1)
                )
            values_per_patch = target.shape[-1]
            out[t] = ((per_patch * mask).sum(), mask.sum().detach() * values_per_patch)
        return out

    # ----------------------------------------------------------------------------------- export
    def shared_params(self) -> list[nn.Parameter]:
        """Parameters of the last shared layer: the last encoder block's MLP output projection."""
        return list(self.blocks[-1].mlp.fc2.parameters())

    def timm_kwargs(self) -> dict:
        """Keyword arguments of ``timm.create_model(self.timm_name, **kwargs)`` for the exported encoder."""
        return dict(
            img_size=self.image_size,
            patch_size=self.patch_size,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            num_classes=0,
            class_token=True,
            no_embed_class=True,
            global_pool="token",
        )

    def timm_encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The RGB encoder under timm ``VisionTransformer`` keys: ``patch_embed.proj.*``, ``cls_token``
        (our global token), ``pos_embed`` (the fixed sine-cosine table), ``blocks.*``, ``norm.*``."""
        if "rgb" not in self.input_adapters:
            raise ConfigError("model.modalities must include 'rgb' to export a timm RGB encoder.")
        state = {f"patch_embed.{k}": v for k, v in self.input_adapters["rgb"].state_dict().items()}
        state["cls_token"] = self.global_token.detach()
        state["pos_embed"] = self.pos_embed.detach()
        state.update({f"blocks.{k}": v for k, v in self.blocks.state_dict().items()})
        state.update({f"norm.{k}": v for k, v in self.norm.state_dict().items()})
        return {k: v.detach().clone().cpu() for k, v in state.items()}


__all__ = [
    "MultiMAE",
    "MultiMAEOutput",
    "CrossAttentionDecoder",
    "SemsegAdapter",
    "allocate_visible",
    "patchify",
    "unpatchify",
]
