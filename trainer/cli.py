"""The ``unirg-trainer`` command: testbed, labeler, rewards, training and evaluation."""

import logging

import click

from unirg.trainer.eval_cli import eval_command
from unirg.trainer.export import export
from unirg.trainer.label_cli import label
from unirg.trainer.rl_cli import rl
from unirg.trainer.score_cli import score
from unirg.trainer.synth.cli import synth
from unirg.trainer.train_cli import publish, sft


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """unirg-trainer: build the synthetic testbed, label reports, train and evaluate report models.

    \b
    Typical use:
      unirg-trainer synth --out testbed --patients 20 --seed 0
    """
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


main.add_command(synth)
main.add_command(label)
main.add_command(score)
main.add_command(eval_command)
main.add_command(sft)
main.add_command(rl)
main.add_command(publish)
main.add_command(export)
