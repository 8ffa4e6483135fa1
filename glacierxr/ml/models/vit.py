"""Vision Transformer forecaster (Dosovitskiy et al., 2020) with learned future-frame queries."""

from __future__ import annotations

import torch
from torch import nn

from glacierxr.ml.models import register_model
from glacierxr.ml.models.base import check_int, sinusoidal
from glacierxr.ml.models.transformer import PatchTokenModel

__all__ = ["VisionTransformerForecaster"]


@register_model("vit")
class VisionTransformerForecaster(PatchTokenModel):
    """Vision Transformer predicting all future frames at once (registry name ``"vit"``).

    Every input frame is cut into ``patch_size × patch_size`` tiles, each projected linearly to
    a token (Dosovitskiy et al., 2020); sinusoidal encodings of the tile's row and column and of
    its frame's time (input frames at times ``-input_steps … -1``) are added.  For each of the
    ``output_steps`` future frames a learned query embedding, plus the same space encodings and
    the encoding of its future time ``0 … output_steps - 1``, plus the embedding of the last
    observed frame's tile at the same place, gives one query token per tile (starting each query
    from what is there now makes persistence easy to learn and speeds training up markedly).
    A pre-norm ViT encoder (multi-head self-attention and GELU MLP blocks with residual
    connections, final LayerNorm) attends over all input and query tokens together, and a
    linear head turns each query token back into its tile's pixels.

    So the model is *not* autoregressive within ``output_steps``: all those frames come out of
    one pass (``targets`` are not used there, and asking for fewer steps returns the first ones
    of the same prediction).  Longer horizons are rolled forward in blocks of ``output_steps``,
    the input window sliding over the predicted frames (or, with probability
    ``teacher_forcing`` per frame, the true ones).

    {padded_tiles}

    The default configuration has **147,236 trainable parameters**.

    Parameters
    ----------
    patch_size : int
        Tile size in pixels.
    d_model : int
        Token features (divisible by ``num_heads`` and by 4 for the 2-D encodings).
    depth : int
        Transformer encoder blocks.
    num_heads : int
        Attention heads.
    mlp_size : int
        Hidden size of the MLP blocks.
    dropout : float
        Dropout in attention, MLP blocks and on the embeddings.
    output_steps : int
        Future frames predicted per pass (number of learned query frames); also the default
        ``steps``.

    {shapes}
    any ``input_steps``, ``steps``, ``height`` and ``width``.

    References
    ----------
    Dosovitskiy, A., Beyer, L., Kolesnikov, A., Weissenborn, D., Zhai, X., Unterthiner, T.,
    Dehghani, M., Minderer, M., Heigold, G., Gelly, S., Uszkoreit, J., & Houlsby, N. (2021).
    An image is worth 16x16 words: Transformers for image recognition at scale. *International
    Conference on Learning Representations (ICLR 2021)*. arXiv:2010.11929 (2020).

    Examples
    --------
    {example_imports}
    >>> model = get_model("vit", patch_size=4, d_model=16, depth=1, num_heads=2)
    >>> model(torch.rand(2, 4, 1, 20, 24), steps=6).shape
    torch.Size([2, 6, 1, 20, 24])
    """

    def __init__(
        self,
        *,
        patch_size: int = 10,
        d_model: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_size: int = 128,
        dropout: float = 0.1,
        output_steps: int = 4,
    ) -> None:
        super().__init__(locals())
        num_heads = self._init_tokens(patch_size, d_model, num_heads, dropout)
        depth = check_int(self.model_name, "depth", depth)
        mlp_size = check_int(self.model_name, "mlp_size", mlp_size)

        self.queries = nn.Parameter(torch.randn(self.output_steps, d_model) * 0.02)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(
                d_model,
                num_heads,
                dim_feedforward=mlp_size,
                dropout=dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            ),
            depth,
            norm=nn.LayerNorm(d_model),
            enable_nested_tensor=False,
        )
        self.head = nn.Linear(d_model, self.patch_size * self.patch_size)

    def _block(self, window: torch.Tensor) -> torch.Tensor:
        """Predict ``output_steps`` frames after ``window (B, T, 1, H, W)`` in one pass."""
        batch, time, _, height, width = window.shape
        p, d, future = self.patch_size, self.d_model, self.output_steps
        padded, space = self._token_grid(window)  # space: (N, d)
        padded_h, padded_w = padded.shape[-2:]
        tokens = space.shape[0]
        past = torch.arange(-time, 0, device=window.device)
        coming = torch.arange(0, future, device=window.device)
        past_code = sinusoidal(past, d).to(window.dtype)
        coming_code = sinusoidal(coming, d).to(window.dtype)
        embedded = self.patches.embed(padded)  # (B, T, N, d)
        inputs = embedded + space + past_code[:, None, :]
        # each future tile's query starts from the last observed tile at the same place
        queries = (self.queries + coming_code)[:, None, :] + space  # (future, N, d)
        queries = queries + embedded[:, -1:]  # (B, future, N, d)
        sequence = torch.cat(
            [
                inputs.reshape(batch, time * tokens, d),
                queries.reshape(batch, future * tokens, d),
            ],
            dim=1,
        )
        encoded = self.encoder(self.embedding_dropout(sequence))[:, time * tokens :]
        pixels = self.head(encoded).reshape(batch, future, tokens, p * p)
        return self.patches.unembed(pixels, padded_h, padded_w)[..., :height, :width]

    def _forecast(self, inputs, steps, targets, teacher_forcing):
        window = inputs
        predictions: list[torch.Tensor] = []
        done = 0
        while True:
            block = self._block(window)
            predictions.append(block)
            done += block.shape[1]
            if done >= steps:
                break
            fed = []
            for k in range(block.shape[1]):
                index = done - block.shape[1] + k
                use_target = self._feed_target(teacher_forcing)
                fed.append(targets[:, index : index + 1] if use_target else block[:, k : k + 1])
            window = torch.cat([window, *fed], dim=1)[:, -inputs.shape[1] :]
        return torch.cat(predictions, dim=1)[:, :steps]
