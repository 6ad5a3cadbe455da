"""DPT (SMP's Dense Prediction Transformer) over plain timm ViTs of any patch size, any input.

SMP's ``DPT`` derives its decoder from the encoder's output strides, assuming patch 16: it
reassembles the token grid to 1/4, 1/8, 1/16 and 1/32 of the input by integer up- and
down-sampling and fuses them by exact doubling, so a patch-14 ViT (DINOv2) gives fractional
factors and grids that never line up, and a patch-16 grid of odd size fails at the stride-2
stage. Here the decoder is always built for a stride-16 grid, whatever the patch: it fuses the
token grid as if each token covered 16 pixels, and its logits (16/patch times the padded
input) are resampled to the padded input.

Padding stays out of attention. The input is padded only to a multiple of the patch (less
than one patch, with the mean colour), so no token is padding alone and every token the ViT
attends over holds image pixels. The decoder's coarsest stage still needs the token grid to
split evenly by its down-sampling factor (derived from the built decoder, not hard-coded): the
grid is padded *after* the encoder, with zero features, and the logits of those positions are
cropped off. Padding the image to ``patch x factor`` instead (up to a whole token row and
column of nothing but mean colour) let those tokens take part in attention, and changing only
their content changed predictions anywhere in the image.

The decoder's widths follow the encoder's (Depth Anything's DPT heads: reassembled features of
E/8, E/4, E/2 and E channels for an encoder of width E, fused at E/6), not SMP's fixed 256-1024
of DPT for ViT-L, so a ViT-S or ViT-B is not paired with a decoder as large as itself.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base.initialization import initialize_decoder, initialize_head
from segmentation_models_pytorch.decoders.dpt.decoder import DPTDecoder, DPTSegmentationHead
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from desertmind.models.network import Scaling
from desertmind.models.smp import SMPNetwork, create_smp

#: the token stride SMP's DPT decoder is built for
DECODER_STRIDE = 16
#: the widths SMP is asked to build its own decoder with, which is replaced at once
PLACEHOLDER_WIDTHS = {"decoder_intermediate_channels": (8, 8, 8, 8),
                      "decoder_fusion_channels": 8}


def build_dpt(backbone: str, *, num_classes: int, weights: str,
              input_scaling: Scaling) -> DPTNetwork:
    """DPT over the timm ViT ``backbone`` under the network contract; its position encoding
    follows any token grid (``dynamic_img_size``)."""
    net = create_smp("dpt", backbone, num_classes=num_classes, weights=weights,
                     dynamic_img_size=True, **PLACEHOLDER_WIDTHS)
    return DPTNetwork(net, num_classes=num_classes, input_scaling=input_scaling)


def decoder_widths(width: int) -> tuple[list[int], int]:
    """(reassembled channels per stage, fusion channels) for an encoder of ``width``."""
    return [width // 8, width // 4, width // 2, width], max(64, width // 6 // 32 * 32)


def patch_size(encoder: nn.Module) -> int:
    """The square patch size of the timm ViT inside SMP's ``TimmViTEncoder``."""
    size = encoder.model.patch_embed.patch_size
    size = size if isinstance(size, int) else size[0]
    return int(size)


def decoder_factor(decoder: DPTDecoder) -> int:
    """How many tokens the decoder's coarsest stage merges per side (its strided convs)."""
    factor = 1
    for block in decoder.reassemble_blocks:
        if isinstance(block.upsample, nn.Conv2d):
            factor = max(factor, int(block.upsample.stride[0]))
    return factor


class DPTNetwork(SMPNetwork):
    """SMP's DPT under the network contract, for ViT encoders of any patch size (see the
    module doc). The encoder is the timm ViT; the head is the decoder and segmentation head,
    built here (SMP's own, built with :data:`PLACEHOLDER_WIDTHS`, is replaced)."""

    def __init__(self, net: smp.DPT, *, num_classes: int,
                 input_scaling: Scaling = "imagenet") -> None:
        super().__init__(net, input_scaling=input_scaling)
        self.patch = patch_size(net.encoder)
        channels = net.encoder.out_channels
        intermediate, fusion = decoder_widths(max(channels))
        net.decoder = DPTDecoder(
            encoder_out_channels=channels,
            encoder_output_strides=[DECODER_STRIDE] * len(channels),
            encoder_has_prefix_tokens=net.encoder.has_prefix_tokens,
            readout="cat" if net.encoder.has_prefix_tokens else "ignore",
            intermediate_channels=intermediate, fusion_channels=fusion)
        net.segmentation_head = DPTSegmentationHead(fusion, num_classes, kernel_size=3,
                                                    upsampling=2)
        initialize_decoder(net.decoder)
        initialize_head(net.segmentation_head)
        self.factor = decoder_factor(net.decoder)
        self.size_multiple = self.patch  # the image is padded to whole patches only

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.encoder(images)[0][-1]  # the last block's token grid

    def plain_vit(self) -> nn.Module | None:
        model = self.net.encoder.model
        return model if isinstance(model, VisionTransformer) else None

    def forward_padded(self, images: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, None]:
        features, prefix_tokens = self.net.encoder(images)
        gh, gw = features[0].shape[-2:]
        f = self.factor  # the token grid padded for the decoder, after attention, with zeros
        pad_h, pad_w = (f - gh % f) % f, (f - gw % f) % f
        features = [F.pad(x, (0, pad_w, 0, pad_h)) for x in features]
        logits = self.net.segmentation_head(self.net.decoder(features, prefix_tokens))
        per_token = logits.shape[-1] // (gw + pad_w)  # decoder pixels per token (16)
        logits = logits[..., :gh * per_token, :gw * per_token]
        if self.patch != DECODER_STRIDE:  # the decoder saw 16-pixel tokens: back to the input
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear",
                                   align_corners=False)
        return logits, None
