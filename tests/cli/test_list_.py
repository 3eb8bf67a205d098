"""initcore list: every strategy, model and activation."""

from initcore import cli, init
from initcore.models import ACTIVATIONS, MODELS


def test_list_mentions_every_strategy_model_and_activation(capsys):
    assert cli.main(["list"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    for name in [*init.names(), *MODELS, *ACTIVATIONS]:
        assert name in out
    for summary in init.describe().values():
        assert summary in out
