"""Encoder–decoder LSTM over flattened patches (Srivastava et al., 2015)."""

from __future__ import annotations

import torch
from torch import nn

from glacierxr.errors import DimensionError
from glacierxr.ml.models import register_model
from glacierxr.ml.models.base import (
    ForecastModel,
    check_bool,
    check_int,
)

__all__ = ["LSTMEncoderDecoder", "PeepholeLSTMCell"]


class PeepholeLSTMCell(nn.Module):
    """One LSTM cell with peephole connections (Gers, Schraudolph & Schmidhuber, 2002).

    The input, forget and output gates also see the cell state through diagonal (elementwise)
    weights: ``i, f`` look at the previous cell state ``c``, ``o`` at the new one ``c'``.

    Shapes: ``x (batch, input_size)``, ``h, c (batch, hidden_size)``.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.input_weights = nn.Linear(input_size, 4 * hidden_size)
        self.hidden_weights = nn.Linear(hidden_size, 4 * hidden_size, bias=False)
        self.peephole_input = nn.Parameter(torch.zeros(hidden_size))
        self.peephole_forget = nn.Parameter(torch.zeros(hidden_size))
        self.peephole_output = nn.Parameter(torch.zeros(hidden_size))
        with torch.no_grad():  # open forget gates at the start (Gers et al., 2000)
            self.input_weights.bias[hidden_size : 2 * hidden_size].fill_(1.0)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        gates = self.input_weights(x) + self.hidden_weights(h)
        i, f, g, o = gates.chunk(4, dim=-1)
        i = torch.sigmoid(i + self.peephole_input * c)
        f = torch.sigmoid(f + self.peephole_forget * c)
        c = f * c + i * torch.tanh(g)
        o = torch.sigmoid(o + self.peephole_output * c)
        return o * torch.tanh(c), c


class _PeepholeLSTM(nn.Module):
    """A stack of :class:`PeepholeLSTMCell` with dropout between layers (nn.LSTM-like API)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        self.cells = nn.ModuleList(
            PeepholeLSTMCell(input_size if layer == 0 else hidden_size, hidden_size)
            for layer in range(num_layers)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, sequence: torch.Tensor, state=None):
        """``sequence (batch, time, features)`` → ``(outputs (batch, time, hidden), (h, c))``.

        ``h`` and ``c`` are ``(num_layers, batch, hidden)`` as in :class:`torch.nn.LSTM`.
        """
        batch = sequence.shape[0]
        if state is None:
            zeros = sequence.new_zeros(len(self.cells), batch, self.cells[0].hidden_size)
            state = (zeros, zeros)
        hs, cs = list(state[0].unbind(0)), list(state[1].unbind(0))
        outputs = []
        for t in range(sequence.shape[1]):
            x = sequence[:, t]
            for layer, cell in enumerate(self.cells):
                if layer > 0:
                    x = self.dropout(x)
                hs[layer], cs[layer] = cell(x, (hs[layer], cs[layer]))
                x = hs[layer]
            outputs.append(x)
        return torch.stack(outputs, dim=1), (torch.stack(hs), torch.stack(cs))


def _lstm(input_size: int, hidden_size: int, num_layers: int, dropout: float, peephole: bool):
    if peephole:
        return _PeepholeLSTM(input_size, hidden_size, num_layers, dropout)
    lstm = nn.LSTM(
        input_size,
        hidden_size,
        num_layers=num_layers,
        batch_first=True,
        dropout=dropout if num_layers > 1 else 0.0,
    )
    with torch.no_grad():  # forget-gate bias 1, as for the peephole cell
        for name, bias in lstm.named_parameters():
            if name.startswith("bias_ih"):
                bias[hidden_size : 2 * hidden_size].fill_(1.0)
    return lstm


@register_model("lstm")
class LSTMEncoderDecoder(ForecastModel):
    """Encoder–decoder LSTM forecasting flattened patches (registry name ``"lstm"``).

    Each ``height × width`` frame is flattened to a vector and (optionally) projected by a
    linear embedding shared by encoder and decoder.  The encoder LSTM reads the input frames;
    its hidden and cell states are copied into a separate decoder LSTM (Srivastava et al.'s
    conditional future predictor), which starts from the last input frame and predicts one frame
    per step through a linear read-out, feeding each prediction (or, with teacher forcing, the
    true frame) back as the next input.

    The default configuration (50 × 50 patches) has **2,335,428 trainable parameters**.

    Parameters
    ----------
    height, width : int
        Patch size the model is built for (flattened patches fix the input size; other sizes
        raise :class:`~glacierxr.errors.DimensionError`).
    hidden_size : int
        LSTM hidden and cell state size.
    num_layers : int
        Stacked LSTM layers in encoder and in decoder.
    embedding_size : int or None
        Size of the linear frame embedding; ``None`` feeds the raw flattened frame.
    peephole : bool
        Use LSTM cells with peephole connections (Gers et al., 2002; a small cell written here)
        instead of :class:`torch.nn.LSTM`.
    dropout : float
        Dropout on the embeddings, between stacked layers and before the read-out.
    {output_steps}

    {shapes}
    any ``input_steps`` and ``steps``.

    References
    ----------
    Srivastava, N., Mansimov, E., & Salakhutdinov, R. (2015). Unsupervised learning of video
    representations using LSTMs. *Proceedings of the 32nd International Conference on Machine
    Learning (ICML)*, PMLR 37, 843–852.

    Hochreiter, S., & Schmidhuber, J. (1997). Long short-term memory. *Neural Computation*,
    9(8), 1735–1780.

    Gers, F. A., Schraudolph, N. N., & Schmidhuber, J. (2002). Learning precise timing with
    LSTM recurrent networks. *Journal of Machine Learning Research*, 3, 115–143.

    Examples
    --------
    {example_imports}
    >>> model = get_model("lstm", height=16, width=16, hidden_size=32, embedding_size=None)
    >>> model(torch.rand(2, 4, 1, 16, 16), steps=2).shape
    torch.Size([2, 2, 1, 16, 16])
    """

    def __init__(
        self,
        *,
        height: int = 50,
        width: int = 50,
        hidden_size: int = 256,
        num_layers: int = 1,
        embedding_size: int | None = 256,
        peephole: bool = False,
        dropout: float = 0.1,
        output_steps: int = 4,
    ) -> None:
        super().__init__(locals())
        name = self.model_name
        self.height = check_int(name, "height", height)
        self.width = check_int(name, "width", width)
        hidden_size = check_int(name, "hidden_size", hidden_size)
        num_layers = check_int(name, "num_layers", num_layers)
        if embedding_size is not None:
            embedding_size = check_int(name, "embedding_size", embedding_size)
        peephole = check_bool(name, "peephole", peephole)

        pixels = self.height * self.width
        if embedding_size is None:
            self.embed = nn.Identity()
            features = pixels
        else:
            self.embed = nn.Sequential(nn.Linear(pixels, embedding_size), nn.ReLU())
            features = embedding_size
        self.dropout = nn.Dropout(dropout)
        self.encoder = _lstm(features, hidden_size, num_layers, dropout, peephole)
        self.decoder = _lstm(features, hidden_size, num_layers, dropout, peephole)
        self.readout = nn.Linear(hidden_size, pixels)

    def _forecast(self, inputs, steps, targets, teacher_forcing):
        batch, time, _, height, width = inputs.shape
        if (height, width) != (self.height, self.width):
            raise DimensionError(
                f"lstm: the model was built for {self.height} x {self.width} patches; found "
                f"{height} x {width}. Build it with get_model('lstm', height={height}, "
                f"width={width})."
            )
        flat = inputs.reshape(batch, time, height * width)
        _, state = self.encoder(self.dropout(self.embed(flat)), None)
        previous = flat[:, -1]
        predictions = []
        for step in range(steps):
            out, state = self.decoder(self.dropout(self.embed(previous))[:, None], state)
            frame = self.readout(self.dropout(out[:, 0]))
            predictions.append(frame)
            if step + 1 == steps:
                break
            if self._feed_target(teacher_forcing):
                previous = targets[:, step].reshape(batch, height * width)
            else:
                previous = frame
        return torch.stack(predictions, dim=1).reshape(batch, steps, 1, height, width)
