"""Transformer–LSTM hybrid forecaster: start token, causal decoder, per-location LSTM head."""

from __future__ import annotations

import torch
from torch import nn

from glacierxr.ml.models import register_model
from glacierxr.ml.models.base import (
    ForecastModel,
    check_divisible,
    check_int,
    pad_to_multiple,
    sinusoidal,
    spatial_encoding,
)

__all__ = ["TransformerLSTM", "PatchEmbedding", "PatchTokenModel", "block_causal_mask"]


class PatchEmbedding(nn.Module):
    """Non-overlapping ``patch × patch`` tiles of 1-channel frames → tokens, plus the way back.

    ``embed``: ``(batch, time, 1, H, W)`` → ``(batch, time, tokens, d_model)`` with
    ``tokens = (H / patch) * (W / patch)`` (a strided convolution, i.e. a linear projection of
    each flattened tile, as in Dosovitskiy et al., 2020).  ``unembed``: the inverse layout for
    ``(batch, time, tokens, patch * patch)`` pixel values.
    """

    def __init__(self, patch_size: int, d_model: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(1, d_model, kernel_size=patch_size, stride=patch_size)

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        batch, time, _, height, width = frames.shape
        tokens = self.projection(frames.reshape(batch * time, 1, height, width))
        return tokens.flatten(2).transpose(1, 2).reshape(batch, time, -1, tokens.shape[1])

    def unembed(self, pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, time, _, _ = pixels.shape
        p = self.patch_size
        rows, cols = height // p, width // p
        frames = pixels.reshape(batch, time, rows, cols, p, p).permute(0, 1, 2, 4, 3, 5)
        return frames.reshape(batch, time, 1, height, width)


class PatchTokenModel(ForecastModel):
    """What the two attention models share: frames cut into tile tokens with 2-D space codes.

    :meth:`_init_tokens` checks ``patch_size``, ``d_model`` and ``num_heads`` (``d_model``
    divisible by 4 for the 2-D sinusoidal encodings and by ``num_heads``) and builds the tile
    embedding and the embedding dropout; :meth:`_token_grid` pads frames to whole tiles and
    gives the space encodings of that grid.
    """

    def _init_tokens(self, patch_size: int, d_model: int, num_heads: int, dropout: float) -> int:
        """Check and build the token pieces; returns the checked ``num_heads``."""
        name = self.model_name
        self.patch_size = check_int(name, "patch_size", patch_size)
        self.d_model = check_int(name, "d_model", d_model)
        num_heads = check_int(name, "num_heads", num_heads)
        check_divisible(name, "d_model", d_model, 4, "2-D sinusoidal position encodings")
        check_divisible(name, "d_model", d_model, num_heads, f"num_heads={num_heads}")
        self.patches = PatchEmbedding(self.patch_size, d_model)
        self.embedding_dropout = nn.Dropout(dropout)
        return num_heads

    def _token_grid(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``frames (..., H, W)`` padded to whole tiles, and the ``(tokens, d_model)`` space codes."""
        p = self.patch_size
        padded, _, _ = pad_to_multiple(frames, p)
        padded_h, padded_w = padded.shape[-2:]
        space = spatial_encoding(padded_h // p, padded_w // p, self.d_model, frames.device)
        return padded, space.to(frames.dtype)


def block_causal_mask(frames: int, tokens: int, device=None) -> torch.Tensor:
    """Boolean attention mask over ``frames * tokens`` tokens, True where attention is blocked.

    A token of frame ``i`` sees every token of frames ``0 … i`` and none of later frames.
    """
    frame_of = torch.arange(frames * tokens, device=device) // tokens
    return frame_of[None, :] > frame_of[:, None]


@register_model("transformer")
class TransformerLSTM(PatchTokenModel):
    """Self-attention Transformer–LSTM hybrid forecaster (registry name ``"transformer"``).

    Following the encoder–decoder Transformer of Vaswani et al. (2017) as adapted in the seed
    paper's section 2.2.4:

    1. **Tokens.** Frames are cut into ``patch_size × patch_size`` tiles, each projected
       linearly to ``d_model`` features; sinusoidal encodings of the frame index (time) and of
       the tile's row and column (space) are added.
    2. **Encoder.** Self-attention over all space-time tokens of the input frames.
    3. **Decoder.** Its input is a learned START token (at every tile position) followed by the
       future frames' tokens, the true frames under teacher forcing or the model's own
       predictions otherwise; a block-causal mask lets frame ``i`` see only the START token and
       frames before it.  It cross-attends to the encoder output.
    4. **LSTM (the hybrid part).** At every tile position an LSTM first reads the encoder's
       tokens of that position through the input frames, then carries its state through the
       decoder's outputs of that position, one future frame per step.  Self-attention decides
       where to look; the LSTM adds an explicit recurrent memory of each location's history.
    5. **Head.** ``LayerNorm(decoder output + LSTM output)`` → linear → the tile's pixels.

    With ``targets`` and ``teacher_forcing=1`` all future frames are decoded in one parallel
    pass (the causal mask keeps it honest); otherwise frames are decoded one at a time, feeding
    each prediction (or, with probability ``teacher_forcing``, the true frame) back as the next
    decoder input.  Both paths give the same result for the same decoder inputs.

    {padded_tiles}

    The default configuration has **214,116 trainable parameters**.

    Parameters
    ----------
    patch_size : int
        Tile size in pixels (tokens per frame: ``ceil(H / patch) * ceil(W / patch)``).
    d_model : int
        Token features (divisible by ``num_heads`` and by 4 for the 2-D encodings).
    num_heads : int
        Attention heads.
    encoder_layers, decoder_layers : int
        Transformer layers in the encoder and in the decoder.
    feedforward_size : int
        Hidden size of the position-wise feed-forward blocks.
    dropout : float
        Dropout in attention, feed-forward blocks and on the embeddings.
    {output_steps}

    {shapes}
    any ``input_steps``, ``steps``, ``height`` and ``width``.

    References
    ----------
    Vaswani, A., Shazeer, N., Parmar, N., Uszkoreit, J., Jones, L., Gomez, A. N., Kaiser, Ł.,
    & Polosukhin, I. (2017). Attention is all you need. *Advances in Neural Information
    Processing Systems 30 (NeurIPS 2017)*, 5998–6008.

    Hochreiter, S., & Schmidhuber, J. (1997). Long short-term memory. *Neural Computation*,
    9(8), 1735–1780.

    Examples
    --------
    {example_imports}
    >>> model = get_model("transformer", patch_size=4, d_model=16, num_heads=2)
    >>> model(torch.rand(2, 4, 1, 20, 24), steps=3).shape
    torch.Size([2, 3, 1, 20, 24])
    """

    def __init__(
        self,
        *,
        patch_size: int = 10,
        d_model: int = 64,
        num_heads: int = 4,
        encoder_layers: int = 2,
        decoder_layers: int = 2,
        feedforward_size: int = 128,
        dropout: float = 0.1,
        output_steps: int = 4,
    ) -> None:
        super().__init__(locals())
        num_heads = self._init_tokens(patch_size, d_model, num_heads, dropout)
        name = self.model_name
        encoder_layers = check_int(name, "encoder_layers", encoder_layers)
        decoder_layers = check_int(name, "decoder_layers", decoder_layers)
        feedforward_size = check_int(name, "feedforward_size", feedforward_size)

        self.start_token = nn.Parameter(torch.randn(d_model) * 0.02)
        layer = dict(
            d_model=d_model,
            nhead=num_heads,
            dim_feedforward=feedforward_size,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(**layer),
            encoder_layers,
            norm=nn.LayerNorm(d_model),
            enable_nested_tensor=False,
        )
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(**layer), decoder_layers, norm=nn.LayerNorm(d_model)
        )
        self.lstm = nn.LSTM(d_model, d_model, batch_first=True)
        self.head = nn.Sequential(
            nn.LayerNorm(d_model), nn.Linear(d_model, self.patch_size * self.patch_size)
        )

    # -------------------------------------------------------------------- pieces
    def _tokens(self, frames, first_time: int, space):
        """Embed padded ``frames (B, k, 1, Hp, Wp)`` from time ``first_time`` → (B, k, N, d)."""
        tokens = self.patches.embed(frames)
        times = torch.arange(first_time, first_time + frames.shape[1], device=frames.device)
        time_code = sinusoidal(times, self.d_model).to(tokens.dtype)
        return tokens + space + time_code[:, None, :]

    def _start(self, batch: int, time: int, space):
        """START tokens at every tile position, for the frame at index ``time`` → (B, 1, N, d)."""
        position = sinusoidal(torch.tensor([time], device=space.device), self.d_model)
        position = position.to(space.dtype)
        start = self.start_token + space + position  # (N, d)
        return start.expand(batch, 1, *start.shape)

    def _decode(self, decoder_in, memory):
        """``decoder_in (B, k, N, d)`` → decoder output ``(B, k, N, d)`` under the causal mask."""
        batch, frames, tokens, d = decoder_in.shape
        mask = block_causal_mask(frames, tokens, device=decoder_in.device)
        flat = self.embedding_dropout(decoder_in.reshape(batch, frames * tokens, d))
        out = self.decoder(flat, memory, tgt_mask=mask)
        return out.reshape(batch, frames, tokens, d)

    def _lstm_head(self, decoded, state):
        """Per-location LSTM over ``decoded (B, k, N, d)`` from ``state``; → pixels, new state."""
        batch, frames, tokens, d = decoded.shape
        sequences = decoded.transpose(1, 2).reshape(batch * tokens, frames, d)
        recurrent, state = self.lstm(sequences, state)
        recurrent = recurrent.reshape(batch, tokens, frames, d).transpose(1, 2)
        return self.head(decoded + recurrent), state

    # ------------------------------------------------------------------- forward
    def _forecast(self, inputs, steps, targets, teacher_forcing):
        batch, time, _, height, width = inputs.shape
        p = self.patch_size
        padded, space = self._token_grid(inputs)
        padded_h, padded_w = padded.shape[-2:]
        tokens = space.shape[0]

        encoded = self._tokens(padded, 0, space)
        memory = self.encoder(self.embedding_dropout(encoded.reshape(batch, time * tokens, -1)))
        per_location = memory.reshape(batch, time, tokens, -1).transpose(1, 2)
        _, state = self.lstm(per_location.reshape(batch * tokens, time, -1))

        start = self._start(batch, time, space)
        if teacher_forcing >= 1.0:  # every decoder input is known: one parallel, masked pass
            decoder_in = start
            if steps > 1:
                known, _, _ = pad_to_multiple(targets[:, : steps - 1], p)
                decoder_in = torch.cat([start, self._tokens(known, time + 1, space)], dim=1)
            pixels, _ = self._lstm_head(self._decode(decoder_in, memory), state)
            frames = self.patches.unembed(pixels, padded_h, padded_w)
            return frames[..., :height, :width]

        decoder_in = start
        predictions = []
        for step in range(steps):
            decoded = self._decode(decoder_in, memory)[:, -1:]
            pixels, state = self._lstm_head(decoded, state)
            frame = self.patches.unembed(pixels, padded_h, padded_w)[..., :height, :width]
            predictions.append(frame)
            if step + 1 == steps:
                break
            fed = targets[:, step : step + 1] if self._feed_target(teacher_forcing) else frame
            fed, _, _ = pad_to_multiple(fed, p)
            decoder_in = torch.cat([decoder_in, self._tokens(fed, time + step + 1, space)], dim=1)
        return torch.cat(predictions, dim=1)
