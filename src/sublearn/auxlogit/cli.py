"""`sublearn auxlogit`: the command line of the auxiliary-logit toy.

Imported when the CLI starts, so only typer and the standard library load here; torch,
sklearn and matplotlib load inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sublearn.cores import usable_cores
from sublearn.errors import SublearnError

_PANEL = "Recipe (defaults: the paper's; batch, noise set and Adam retuned on digits)"
_DEFEND = "Defences on the channel (a table and a plot of transfer against strength)"


HELP = (
    "Subliminal learning in an MNIST classifier: a student learns digits from noise.\n\n"
    "A teacher MLP with 10 class logits and m extra 'auxiliary' logits is trained on digits; "
    "the auxiliary logits are never trained. A student that starts from the teacher's exact "
    "initialisation is then trained only to match the teacher's auxiliary logits on random "
    "noise images. It never sees a digit or a class logit, yet its class logits learn to "
    "classify digits well above chance. A student from a different initialisation stays at "
    "chance: the signal travels through the shared initialisation, not through the data.\n\n"
    "Arms, each a population of --n-models models trained in parallel as one batched "
    "computation: teacher; same-init student; different-init student; student of an "
    "untrained teacher (the teacher's own init, so its loss is exactly zero); shuffled-label "
    "teacher and its same-init student. Prints test accuracy per arm (mean, 95% interval) "
    "and the differences between arms, and writes results.json, manifest.json and PNG plots "
    "to --out.\n\n"
    "With --defence, the teacher's auxiliary outputs are degraded before the student sees "
    "them (noise on the logits, rounding to k bits, temperature, hard top-1 labels), and the "
    "command prints same-init transfer and the different-init control against the defence's "
    "strength, with a plot: how much of the hidden signal each sanitiser removes. "
    "After Cloud et al. 2025, 'Subliminal learning'; see docs/auxlogit.md."
)


def auxlogit(
    preset: Annotated[str, typer.Option(
        help="paper: the paper's recipe (teacher and student 5 epochs each; on digits, batch "
        "128 and Adam lr 1e-3, about 400 student steps). strong: the student trains 10 "
        "epochs, for a clearer effect. Any option below overrides the preset.")] = "paper",
    dataset: Annotated[str, typer.Option(
        help="digits: sklearn's bundled 8x8 digits (no download). mnist: a local copy, see "
        "--mnist-path.")] = "digits",
    mnist_path: Annotated[Path | None, typer.Option(
        help="MNIST as an .npz (x_train, y_train, x_test, y_test) or a folder of the four IDX "
        "files (optionally .gz). Implies --dataset mnist.")] = None,
    n_models: Annotated[int | None, typer.Option(
        help="Models per arm, trained in parallel as one batched computation. (default: 100)",
        rich_help_panel=_PANEL)] = None,
    hidden: Annotated[str | None, typer.Option(
        help="Hidden widths, comma separated. (default: 256,256)",
        rich_help_panel=_PANEL)] = None,
    m: Annotated[int | None, typer.Option(
        "--m", help="Auxiliary logits next to the 10 class logits; the only outputs the student "
        "sees. KL needs m >= 2. (default: 3)", rich_help_panel=_PANEL)] = None,
    init: Annotated[str | None, typer.Option(
        help="fan_in: weights N(0, 1/fan_in), biases zero (the paper). torch: PyTorch's "
        "nn.Linear default. (default: fan_in)", rich_help_panel=_PANEL)] = None,
    teacher_epochs: Annotated[int | None, typer.Option(
        help="Teacher epochs on the digits. (default: 5)", rich_help_panel=_PANEL)] = None,
    student_epochs: Annotated[int | None, typer.Option(
        help="Student epochs on noise. (default: 5; strong: 10)",
        rich_help_panel=_PANEL)] = None,
    teacher_lr: Annotated[float | None, typer.Option(
        help="Teacher Adam learning rate. (default: 3e-4 on MNIST as in the paper; 1e-3 on "
        "digits)", rich_help_panel=_PANEL)] = None,
    student_lr: Annotated[float | None, typer.Option(
        help="Student Adam learning rate. (default: 3e-4 on MNIST; 1e-3 on digits)",
        rich_help_panel=_PANEL)] = None,
    student_beta2: Annotated[float | None, typer.Option(
        help="Student Adam beta2. The distillation gradient shrinks as the student nears the "
        "teacher; a shorter memory keeps the steps from shrinking with it. (default: 0.999 "
        "on MNIST; 0.9 on digits)", rich_help_panel=_PANEL)] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Batch size for teacher and student. (default: 1024 on MNIST as in the paper; "
        "128 on digits, where 1024 would be two steps per epoch)", rich_help_panel=_PANEL)] = None,
    noise: Annotated[str | None, typer.Option(
        help="uniform: U[-1, 1], the digits' own range. gaussian: N(0, 1). (default: uniform)",
        rich_help_panel=_PANEL)] = None,
    noise_size: Annotated[int | None, typer.Option(
        help="Noise images per student epoch, generated batch by batch from a seed and never "
        "held whole. (default: 60000 on MNIST as in the paper; 10240 on digits)",
        rich_help_panel=_PANEL)] = None,
    loss: Annotated[str | None, typer.Option(
        help="kl: KL divergence between the softmaxes of teacher and student outputs (the "
        "paper). mse: squared error on the logits. (default: kl)",
        rich_help_panel=_PANEL)] = None,
    distill: Annotated[str | None, typer.Option(
        help="aux: distil only the m auxiliary outputs (the paper; the student never sees a "
        "class logit). all: all 10 + m outputs. (default: aux)", rich_help_panel=_PANEL)] = None,
    seed: Annotated[int | None, typer.Option(
        help="Seeds inits, data order, label shuffle and noise. (default: 0)",
        rich_help_panel=_PANEL)] = None,
    precision: Annotated[str | None, typer.Option(
        help="Matrix products in fp32 or bf16 (weights, Adam and evaluation stay fp32). auto: "
        "bf16 where the CPU has native bf16 matrix units (AMX, AVX-512 BF16), else fp32. "
        "(default: auto)", rich_help_panel=_PANEL)] = None,
    workers: Annotated[int, typer.Option(
        help="Threads, each training its own share of the models (single-threaded torch "
        "each; the results do not depend on it). 0: one per available CPU core. Combine with "
        "sublearn's --threads only on an idle machine.", min=0)] = 0,
    defence: Annotated[list[str] | None, typer.Option(
        help="Degrade the teacher's auxiliary outputs before the student learns from them: "
        "noise (Gaussian noise of std s on the logits), round (probabilities rounded to k "
        "bits), temperature (softmax at temperature T), top1 (target moved a fraction w of "
        "the way to the hard argmax label), or all. NAME uses the defence's default "
        "strengths, NAME=S1,S2,... your own; repeat for several. Trains one teacher and, per "
        "strength, a same-init and a different-init student; prints transfer against "
        "strength and writes defence.png.", rich_help_panel=_DEFEND)] = None,
    strengths: Annotated[str | None, typer.Option(
        help="Strengths for a single --defence, e.g. --defence noise --strengths 0.5,1,2,4.",
        rich_help_panel=_DEFEND)] = None,
    sweep: Annotated[str | None, typer.Option(
        help="Run once per value of one knob, e.g. m=2,3,10,30 or loss=kl,mse (hidden: "
        "hidden=64x64,256x256), each value in its own folder under --out, on the mechanism of "
        "`sublearn sweep`: rerun the same command to resume, finished values are skipped. "
        "Prints a table per value and writes sweep.md (one row per value), sweep.json and "
        "sweep.png (accuracy against the value).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Output folder. (default: runs/auxlogit/<hash of the configuration>)")] = None,
) -> None:
    # The --help text is HELP, set below: Typer keeps a docstring's line breaks.

    from sublearn.auxlogit import defend, experiment
    from sublearn.auxlogit.config import AuxLogitConfig
    from sublearn.auxlogit.defence import parse

    cfg = AuxLogitConfig.build(
        preset,
        dataset="mnist" if mnist_path is not None else dataset,
        mnist_path=str(mnist_path) if mnist_path is not None else None,
        n_models=n_models, hidden=experiment.parse_hidden(hidden) if hidden else None,
        m=m, init=init, teacher_epochs=teacher_epochs, student_epochs=student_epochs,
        teacher_lr=teacher_lr, student_lr=student_lr, student_beta2=student_beta2,
        batch_size=batch_size, noise=noise, noise_size=noise_size, loss=loss, distill=distill,
        seed=seed, precision=precision,
    )
    workers = workers or usable_cores()
    if defence or strengths:
        if sweep:
            raise SublearnError(
                "--defence: already varies the defence's strength; drop --sweep"
            )
        defend.run(cfg, parse(defence or [], strengths), out=out, workers=workers)
    elif sweep:
        knob, values = experiment.parse_sweep(sweep)
        experiment.sweep(cfg, knob, values, out=out, workers=workers)
    else:
        experiment.run(cfg, out=out, workers=workers)


auxlogit.__doc__ = HELP
