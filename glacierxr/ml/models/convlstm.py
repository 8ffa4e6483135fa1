"""ConvLSTM encoder–forecaster (Shi et al., 2015)."""

from __future__ import annotations

import torch
from torch import nn

from glacierxr.ml.models import register_model
from glacierxr.ml.models.base import (
    ForecastModel,
    check_ints,
    check_odd,
)

__all__ = ["ConvLSTMCell", "ConvLSTMForecaster"]


class ConvLSTMCell(nn.Module):
    """An LSTM cell whose matrix products are 2-D convolutions (Shi et al., 2015, eq. 3).

    All four gates come from one convolution over ``[x, h]`` stacked as channels, with
    ``kernel_size // 2`` zero padding so the state keeps the frame's height and width.

    Shapes: ``x (batch, input_channels, H, W)``, ``h, c (batch, hidden_channels, H, W)``.
    """

    def __init__(self, input_channels: int, hidden_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(
            input_channels + hidden_channels,
            4 * hidden_channels,
            kernel_size,
            padding=kernel_size // 2,
        )
        with torch.no_grad():  # open forget gates at the start
            self.gates.bias[hidden_channels : 2 * hidden_channels].fill_(1.0)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        i, f, g, o = self.gates(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class _ConvLSTMStack(nn.Module):
    def __init__(self, input_channels: int, hidden: tuple[int, ...], kernel_size: int, dropout):
        super().__init__()
        channels = (input_channels, *hidden)
        self.cells = nn.ModuleList(
            ConvLSTMCell(channels[k], channels[k + 1], kernel_size) for k in range(len(hidden))
        )
        self.dropout = nn.Dropout(dropout)

    def step(self, x, states):
        """One time step through every layer; returns the new ``[(h, c), ...]``."""
        new = []
        for layer, (cell, state) in enumerate(zip(self.cells, states, strict=True)):
            if layer > 0:
                x = self.dropout(x)
            h, c = cell(x, state)
            new.append((h, c))
            x = h
        return new

    def zeros(self, like: torch.Tensor):
        batch, _, height, width = like.shape
        return [
            (like.new_zeros(batch, cell.hidden_channels, height, width),) * 2 for cell in self.cells
        ]


@register_model("convlstm")
class ConvLSTMForecaster(ForecastModel):
    """ConvLSTM encoder–forecaster (registry name ``"convlstm"``).

    A stack of ConvLSTM layers (convolutions instead of the LSTM's matrix products, so the
    states are feature maps) reads the input frames.  Its states are handed layer by layer to a
    forecasting stack of the same shape, which at each step takes the previous frame (its own
    prediction, or the true frame under teacher forcing) and predicts the next one with a 1 × 1
    convolution over the concatenated hidden states of all forecasting layers, as in Shi et al.
    (2015).  Unlike Shi et al., the cells have no peephole terms (the formulation of the seed
    paper's section 2.2.2) and the forecaster is conditioned on the previous frame.

    Works on any ``height × width`` (same-size zero padding).  The default configuration has
    **56,737 trainable parameters**.

    Parameters
    ----------
    hidden_channels : sequence of int
        Hidden channels of each stacked ConvLSTM layer (encoder and forecaster alike).
    kernel_size : int
        Odd convolution kernel size of the cells.
    dropout : float
        Dropout between stacked layers and before the 1 × 1 head.
    {output_steps}

    {shapes}
    any ``input_steps``, ``steps``, ``height`` and ``width``.

    References
    ----------
    Shi, X., Chen, Z., Wang, H., Yeung, D.-Y., Wong, W.-K., & Woo, W.-C. (2015). Convolutional
    LSTM network: A machine learning approach for precipitation nowcasting. *Advances in Neural
    Information Processing Systems 28 (NeurIPS 2015)*, 802–810.

    Petrou, Z. I., & Tian, Y. (2019). Prediction of sea ice motion with convolutional long
    short-term memory networks. *IEEE Transactions on Geoscience and Remote Sensing*, 57(9),
    6865–6876.

    Examples
    --------
    {example_imports}
    >>> model = get_model("convlstm", hidden_channels=(8, 8))
    >>> model(torch.rand(2, 4, 1, 20, 24), steps=3).shape
    torch.Size([2, 3, 1, 20, 24])
    """

    def __init__(
        self,
        *,
        hidden_channels: tuple[int, ...] = (16, 16),
        kernel_size: int = 3,
        dropout: float = 0.1,
        output_steps: int = 4,
    ) -> None:
        super().__init__(locals())
        name = self.model_name
        hidden = check_ints(name, "hidden_channels", hidden_channels)
        kernel_size = check_odd(name, "kernel_size", kernel_size)
        self.encoder = _ConvLSTMStack(1, hidden, kernel_size, dropout)
        self.forecaster = _ConvLSTMStack(1, hidden, kernel_size, dropout)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Conv2d(sum(hidden), 1, kernel_size=1)

    def _forecast(self, inputs, steps, targets, teacher_forcing):
        states = self.encoder.zeros(inputs[:, 0])
        for t in range(inputs.shape[1]):
            states = self.encoder.step(inputs[:, t], states)
        previous = inputs[:, -1]
        predictions = []
        for step in range(steps):
            states = self.forecaster.step(previous, states)
            hidden = torch.cat([h for h, _ in states], dim=1)
            frame = self.head(self.dropout(hidden))
            predictions.append(frame)
            if step + 1 == steps:
                break
            previous = targets[:, step] if self._feed_target(teacher_forcing) else frame
        return torch.stack(predictions, dim=1)
