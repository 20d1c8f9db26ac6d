"""Rendered-shape image domains for the classification examples (generated in code, no download).

Five classes (disk, square, triangle, plus, ring), random position, size and rotation, drawn with
a soft one-pixel edge. Source domain: a white shape on black, little noise. Target domain: the same
shape distribution composited MNIST-M style onto a random low-frequency colour texture
(``|texture - shape|``, texture in [0, 0.6]), so colours and contrast change between domains.
"""
import math

import torch
import torch.nn.functional as F

CLASSES = ("disk", "square", "triangle", "plus", "ring")


def _signed_distance(cls, u, v):
    """Approximate signed distance (in units of the shape size, < 0 inside) of each class."""
    r = torch.sqrt(u * u + v * v)
    disk = r - 1.0
    square = torch.maximum(u.abs(), v.abs()) - 0.8
    tri = None
    for k in range(3):
        a = math.pi / 2 + 2 * math.pi * k / 3
        d = -(math.cos(a) * u + math.sin(a) * v) - 0.5
        tri = d if tri is None else torch.maximum(tri, d)
    plus = torch.minimum(torch.maximum(u.abs() - 0.3, v.abs() - 1.0),
                         torch.maximum(v.abs() - 0.3, u.abs() - 1.0))
    ring = (r - 0.72).abs() - 0.28
    table = torch.stack([disk, square, tri, plus, ring], 0)  # (5, n, H, W)
    return table.gather(0, cls.view(1, -1, 1, 1).expand(1, *u.shape)).squeeze(0)


def render_masks(n: int, size: int, generator: torch.Generator):
    """n soft shape masks (n, size, size) in [0, 1] and their labels."""
    labels = torch.randint(0, len(CLASSES), (n,), generator=generator)
    centre = size / 2 + (torch.rand(n, 2, generator=generator) - 0.5) * size * 0.3
    scale = size * (0.22 + 0.12 * torch.rand(n, generator=generator))
    angle = torch.rand(n, generator=generator) * 2 * math.pi
    coords = torch.arange(size, dtype=torch.get_default_dtype()) + 0.5
    dy = coords.view(1, size, 1) - centre[:, 1].view(n, 1, 1)
    dx = coords.view(1, 1, size) - centre[:, 0].view(n, 1, 1)
    c, s = torch.cos(angle).view(n, 1, 1), torch.sin(angle).view(n, 1, 1)
    u = (c * dx + s * dy) / scale.view(n, 1, 1)
    v = (-s * dx + c * dy) / scale.view(n, 1, 1)
    d = _signed_distance(labels, u, v) * scale.view(n, 1, 1)  # back to pixels
    return torch.sigmoid(-2.5 * d), labels


def source_domain(n: int, size: int, generator: torch.Generator):
    mask, labels = render_masks(n, size, generator)
    x = mask.unsqueeze(1).expand(n, 3, size, size) + 0.05 * torch.randn(n, 3, size, size, generator=generator)
    return (x.clamp(0, 1) - 0.5) / 0.5, labels


def target_domain(n: int, size: int, generator: torch.Generator):
    mask, labels = render_masks(n, size, generator)
    texture = 0.6 * torch.rand(n, 3, 4, 4, generator=generator)
    texture = F.interpolate(texture, size=(size, size), mode="bilinear", align_corners=False)
    x = (texture - mask.unsqueeze(1)).abs() + 0.05 * torch.randn(n, 3, size, size, generator=generator)
    return (x.clamp(0, 1) - 0.5) / 0.5, labels


def to_image(x: torch.Tensor):
    """(3, H, W) normalised tensor -> (H, W, 3) array for imshow."""
    return (x * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy()
