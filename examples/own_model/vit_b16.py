"""Your own similarity model, the way PyTorch users ship one: a ViT-B/16 image encoder (torchvision,
224 px) saved as TorchScript, as a ``torch.export`` program and as a state_dict for its factory.

    python examples/own_model/vit_b16.py --out models
    sane explain examples/query.jpg examples/reference.jpg --model models/vit_b16.pt2 --preprocess imagenet

The weights here are random (nothing is downloaded): load your trained ones where the comment says.
``image_encoder`` and ``clip_style_encoder`` are factories for ``--model vit_b16:image_encoder``
(with ``--weights models/vit_b16_state.pt``; put this folder on PYTHONPATH). Small sizes
(``--layers 2 --hidden 64``) make a test-sized ViT of the same family.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer


def image_encoder(image_size: int = 224, patch_size: int = 16, layers: int = 12, heads: int = 12, hidden: int = 768,
                  mlp: int = 3072) -> nn.Module:
    """ViT-B/16 (by default) whose embedding is the class token: torchvision's classifier head is
    replaced by the identity (its zero-initialised head would map every image to 0)."""
    vit = VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=layers, num_heads=heads,
                            hidden_dim=hidden, mlp_dim=mlp)
    vit.heads = nn.Identity()
    return vit.eval()


class ClipStyleEncoder(nn.Module):
    """A CLIP-style image tower: ViT class token, LayerNorm, linear projection to a joint space
    (CLIP ViT-B/16: 768 -> 512). Use with ``--preprocess clip``."""

    def __init__(self, dim: int = 512, **vit):
        super().__init__()
        self.trunk = image_encoder(**vit)
        hidden = self.trunk.hidden_dim
        self.ln_post = nn.LayerNorm(hidden)
        self.proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.ln_post(self.trunk(x)))


def clip_style_encoder(dim: int = 512, **vit) -> nn.Module:
    """Factory of :class:`ClipStyleEncoder` (``--model vit_b16:clip_style_encoder --preprocess clip``)."""
    return ClipStyleEncoder(dim, **vit).eval()


def save_all(model: nn.Module, out: Path, name: str, size: int) -> list[Path]:
    """``name``.pt (TorchScript), ``name``.pt2 (torch.export, dynamic batch) and ``name``_state.pt (state_dict)."""
    out.mkdir(parents=True, exist_ok=True)
    example = torch.randn(2, 3, size, size)
    with torch.no_grad():
        # check_trace=False: torchvision's ViT traces to an equal graph whose node names differ per run.
        torch.jit.trace(model, example[:1], check_trace=False).save(str(out / f"{name}.pt"))
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(out / f"{name}.pt2"))
    torch.save(model.state_dict(), out / f"{name}_state.pt")
    return [out / f"{name}.pt", out / f"{name}.pt2", out / f"{name}_state.pt"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="models")
    parser.add_argument("--name", default="vit_b16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--clip-style", action="store_true", help="add the CLIP-style projection head")
    args = parser.parse_args(argv)
    sizes = {"image_size": args.image_size, "layers": args.layers, "hidden": args.hidden,
             "heads": max(1, args.hidden // 64), "mlp": 4 * args.hidden}
    torch.manual_seed(0)
    model = clip_style_encoder(**sizes) if args.clip_style else image_encoder(**sizes)
    # model.load_state_dict(torch.load("your_trained_weights.pt"))  # <- your own weights go here
    for path in save_all(model, Path(args.out), args.name, args.image_size):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
