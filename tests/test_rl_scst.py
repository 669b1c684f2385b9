"""Self-critical GRPO (``advantage_baseline = "greedy"``): the baseline is the policy's greedy draft, generated
through TRL's own prompt path, and it is the draft the plugin would write. Tiny real Qwen3-VL, synthetic testbed."""

import pytest
import torch

from unirg.model import GenerationConfig, load_model
from unirg.trainer.rl import build_trainer, load_samples, study_input, train_rl
from unirg.trainer.rl_config import RLConfigError, load_rl_config
from unirg.trainer.rl_scst import SelfCriticalGRPOTrainer, self_critical_advantages

from conftest import tiny_greedy_rl_config


def test_advantage_is_reward_minus_the_greedy_reward_of_its_prompt():
    rewards = torch.tensor([1.0, 0.5, 0.5, 0.5, 0.2, float("nan")])
    greedy = torch.tensor([0.5, 0.4])
    advantages = self_critical_advantages(rewards, greedy, group_size=3)
    assert advantages.tolist() == pytest.approx([0.5, 0.0, 0.0, 0.1, -0.2, 0.0])  # NaN (unscorable) -> 0
    # a group whose rollouts all tie but beat the greedy draft still gets a gradient (GRPO's would be 0)
    assert self_critical_advantages(torch.tensor([0.8, 0.8]), torch.tensor([0.3]), 2).tolist() == \
        pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="rollouts"):
        self_critical_advantages(torch.zeros(5), torch.zeros(2), 3)


def test_greedy_baseline_is_a_grpo_option():
    cfg = load_rl_config(preset="unirg-step1", overrides={"advantage_baseline": "greedy"})
    assert cfg.summary()["advantage_baseline"] == "greedy"
    with pytest.raises(RLConfigError, match="GRPO option"):
        load_rl_config(preset="unirg-step1", overrides={"advantage_baseline": "greedy", "algorithm": "rloo"})
    with pytest.raises(RLConfigError, match="one process"):
        load_rl_config(preset="unirg-step1", overrides={"advantage_baseline": "greedy", "use_vllm": True})
    with pytest.raises(RLConfigError, match="advantage_baseline must be one of"):
        load_rl_config(preset="unirg-step1", overrides={"advantage_baseline": "best"})


@pytest.mark.slow
def test_greedy_baseline_is_the_plugins_draft_and_training_logs_it(testbed, tmp_path):
    torch.set_num_threads(2)
    cfg = tiny_greedy_rl_config(testbed, tmp_path, max_steps=2, learning_rate=1e-3)
    tiny = cfg.sft
    samples = load_samples(cfg)
    setup = build_trainer(cfg, samples=samples)
    assert isinstance(setup.trainer, SelfCriticalGRPOTrainer)

    rows = [setup.trainer.train_dataset[i] for i in range(2)]
    _, greedy_ids = setup.trainer._greedy_completion_ids(rows)
    drafted = load_model(tiny).draft([study_input(s, size=64) for s in samples[:2]],
                                     GenerationConfig(max_new_tokens=12, batch_size=2))
    baseline_texts = setup.trainer._texts(greedy_ids)
    assert [d.raw_text.strip() for d in drafted] == [t.strip() for t in baseline_texts]

    result = train_rl(cfg, setup=setup)
    steps = [h for h in result.log_history if "loss" in h]
    assert len(steps) == 2
    for entry in steps:
        assert 0.0 <= entry["scst/beats_greedy"] <= 1.0
        assert "scst/greedy_reward" in entry
    assert (tmp_path / "out" / "model.safetensors").is_file()
