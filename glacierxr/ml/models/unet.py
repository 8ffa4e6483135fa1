"""U-Net (Ronneberger et al., 2015) rolled forward in time one frame at a time."""

from __future__ import annotations

import torch
from torch import nn

from glacierxr.errors import DimensionError
from glacierxr.ml.models import register_model
from glacierxr.ml.models.base import (
    ForecastModel,
    check_int,
    pad_to_multiple,
)

__all__ = ["RecurrentUNet", "UNet"]


def _double_conv(input_channels: int, output_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(input_channels, output_channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(output_channels, output_channels, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A plain U-Net: ``(batch, in_channels, H, W)`` → ``(batch, out_channels, H, W)``.

    ``H`` and ``W`` must be divisible by ``2 ** depth`` (:class:`RecurrentUNet` pads for you).
    Convolutions are zero-padded ("same"), so no cropping of the skip connections is needed,
    unlike the original's unpadded ("valid") convolutions.
    """

    def __init__(
        self, in_channels: int, out_channels: int, base_channels: int, depth: int, dropout: float
    ) -> None:
        super().__init__()
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.inc = _double_conv(in_channels, widths[0])
        self.down = nn.ModuleList(_double_conv(widths[k], widths[k + 1]) for k in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(dropout)  # end of the contracting path, as in the original
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[k + 1], widths[k], 2, stride=2)
            for k in reversed(range(depth))
        )
        self.up_conv = nn.ModuleList(
            _double_conv(2 * widths[k], widths[k]) for k in reversed(range(depth))
        )
        self.out = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inc(x)
        skips = []
        for block in self.down:
            skips.append(x)
            x = block(self.pool(x))
        x = self.dropout(x)
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips), strict=True):
            x = conv(torch.cat([skip, up(x)], dim=1))
        return self.out(x)


@register_model("unet")
class RecurrentUNet(ForecastModel):
    """U-Net predicting the next frame, rolled forward over its own predictions (``"unet"``).

    The last ``input_steps`` frames are stacked as channels; a U-Net (contracting path of
    3 × 3 convolutions + ReLU and 2 × 2 max-pooling that doubles the channels at every level,
    expanding path of 2 × 2 up-convolutions that halve them, skip connections concatenating the
    contracting path's feature maps, 1 × 1 output convolution) predicts the next frame.  The
    window then slides by one frame over that prediction (or, under teacher forcing, over the
    true frame) until ``steps`` frames are predicted.

    Frames of any ``height × width`` work: they are padded by edge replication up to a multiple
    of ``2 ** depth`` and the prediction is cropped back.  The default configuration has
    **482,177 trainable parameters**.

    Parameters
    ----------
    input_steps : int
        Frames in the sliding window (input channels of the U-Net); ``inputs`` must have exactly
        this many time steps.
    base_channels : int
        Channels of the first level; level ``k`` has ``base_channels * 2**k``.
    depth : int
        Number of 2 × 2 poolings (levels below the first).
    dropout : float
        Dropout at the bottom of the contracting path.
    {output_steps}

    {shapes}
    any ``steps``, ``height`` and ``width``.

    References
    ----------
    Ronneberger, O., Fischer, P., & Brox, T. (2015). U-Net: Convolutional networks for
    biomedical image segmentation. In *Medical Image Computing and Computer-Assisted
    Intervention – MICCAI 2015*, Lecture Notes in Computer Science 9351, 234–241. Springer.

    Examples
    --------
    {example_imports}
    >>> model = get_model("unet", input_steps=2, base_channels=4, depth=2)
    >>> model(torch.rand(3, 2, 1, 50, 50), steps=4).shape
    torch.Size([3, 4, 1, 50, 50])
    """

    def __init__(
        self,
        *,
        input_steps: int = 4,
        base_channels: int = 16,
        depth: int = 3,
        dropout: float = 0.1,
        output_steps: int = 4,
    ) -> None:
        super().__init__(locals())
        name = self.model_name
        self.input_steps = check_int(name, "input_steps", input_steps)
        base_channels = check_int(name, "base_channels", base_channels)
        self.depth = check_int(name, "depth", depth, minimum=0)
        self.unet = UNet(self.input_steps, 1, base_channels, self.depth, dropout)

    def _forecast(self, inputs, steps, targets, teacher_forcing):
        if inputs.shape[1] != self.input_steps:
            raise DimensionError(
                f"unet: the model takes exactly input_steps={self.input_steps} frames; found "
                f"{inputs.shape[1]}. Slice inputs[:, -{self.input_steps}:] or build the model "
                f"with get_model('unet', input_steps={inputs.shape[1]})."
            )
        window = inputs[:, :, 0]  # (batch, input_steps, height, width)
        predictions = []
        for step in range(steps):
            padded, height, width = pad_to_multiple(window, 2**self.depth)
            frame = self.unet(padded)[:, :, :height, :width]  # (batch, 1, height, width)
            predictions.append(frame)
            if step + 1 == steps:
                break
            fed = targets[:, step] if self._feed_target(teacher_forcing) else frame
            window = torch.cat([window[:, 1:], fed], dim=1)
        return torch.stack(predictions, dim=1)
