"""`unirg-trainer rl` configuration: presets, validation messages, config files, scale configs, CLI (no model)."""

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from unirg.trainer.presets import PRESETS, get_preset
from unirg.trainer.rewards.judge import JudgeNotConfigured
from unirg.trainer.rl import (
    ZeroStdMonitor,
    build_reward_funcs,
    fit_scaling,
    resolve_rewards,
)
from unirg.trainer.rl_cli import rl
from unirg.trainer.rl_config import RLConfig, RLConfigError, load_rl_config, parse_override

CONFIGS = Path(__file__).resolve().parents[1] / "trainer" / "configs"


def test_step1_preset_is_unirgs_recipe():
    preset = get_preset("unirg-step1")
    assert dict(preset.reward_components) == {"bertscore": 0.370, "semb": 0.253, "radgraph": 0.377, "bleu": 0.0}
    assert set(preset.standardize) == {"bertscore", "semb", "radgraph", "bleu"}  # each standard-scaled
    cfg = load_rl_config(preset="unirg-step1")
    assert cfg.num_generations == 16
    assert cfg.epsilon == 0.2 and cfg.epsilon_high == 0.28  # DAPO clip-higher
    assert cfg.learning_rate == 5e-6
    assert cfg.num_train_epochs == 1.0
    assert cfg.beta == 0.0  # no KL
    assert cfg.temperature == 1.0
    assert cfg.reward_scaling == "references"
    assert cfg.preset == "unirg-step1"


def test_step2_preset_adds_judge_and_kl(monkeypatch):
    monkeypatch.delenv("UNIRG_JUDGE_BASE_URL", raising=False)
    preset = get_preset("unirg-step2")
    assert preset.reward_components["judge"] == 0.5
    assert {k: v for k, v in preset.reward_components.items() if k != "judge"} == dict(
        get_preset("unirg-step1").reward_components)
    assert "judge" not in preset.standardize  # 1/(1 + errors) is used as is
    cfg = load_rl_config(preset="unirg-step2", overrides={"judge": {"backend": "transformers", "model": "/m"}})
    assert cfg.beta == 0.03
    assert cfg.num_generations == 16 and cfg.epsilon_high == 0.28 and cfg.learning_rate == 5e-6
    with pytest.raises(JudgeNotConfigured, match="reward.judge"):
        load_rl_config(preset="unirg-step2")


def test_step2_without_judge_fails_when_building_the_reward(monkeypatch):
    monkeypatch.delenv("UNIRG_JUDGE_BASE_URL", raising=False)
    cfg = load_rl_config(preset="unirg-step2", overrides={"judge": {"backend": "transformers", "model": "/m"}})
    specs = resolve_rewards(cfg)
    with pytest.raises(JudgeNotConfigured):
        build_reward_funcs(specs, None)


def test_cpu_defaults():
    cfg = RLConfig(bf16=True)
    assert cfg.use_cpu is True and cfg.bf16 is False and cfg.fp16 is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"temperature": 0.0}, "temperature=0.0: greedy rollouts are identical"),
        ({"num_generations": 1}, "num_generations must be >= 2"),
        ({"num_generations": 16, "per_device_train_batch_size": 12}, "not a multiple of num_generations"),
        ({"epsilon": 0.3, "epsilon_high": 0.2}, "clip-higher needs the upper clip"),
        ({"reward_components": {"radgrpah": 1.0}}, "did you mean radgraph"),
        ({"reward_components": {"bleu": 0.0}}, "every reward weight is 0"),
        ({"reward_components": {}}, "reward_components is empty"),
        ({"reward_scaling": {"bleu": [0.1, 0.0]}}, "std > 0"),
        ({"reward_scaling": "zscore"}, "reward_scaling must be"),
        ({"bertscore_model": "/x"}, "needs bertscore_layers"),
        ({"algorithm": "ppo"}, "algorithm must be one of"),
        ({"sft": "/nonexistent/sft"}, "is not a directory"),
        ({"lora_r": 0}, "use_lora=false"),
        ({"max_completion_length": 4}, "too short"),
        ({"beta": -0.1}, "beta"),
        ({"holdout_fraction": 1.0}, "holdout_fraction must be in"),
    ],
)
def test_validation_says_how_to_fix(overrides, message):
    with pytest.raises(RLConfigError, match=message):
        load_rl_config(overrides={"num_generations": 4, "per_device_train_batch_size": 4, **overrides})


def test_only_coarse_components_warn_about_ties(caplog):
    with caplog.at_level(logging.WARNING, logger="unirg.trainer.rl_config"):
        load_rl_config(overrides={"reward_components": {"chexpert_f1": 1.0}, "num_generations": 4,
                                  "per_device_train_batch_size": 4})
    assert "coarse components" in caplog.text


def test_file_overrides_preset_and_cli_overrides_file(tmp_path):
    path = tmp_path / "rl.toml"
    path.write_text(
        'preset = "unirg-step1"\n[train]\nlearning_rate = 1e-4\nmax_steps = 7\n'
        '[reward]\nscaling = "none"\n[lora]\nr = 8\n[data]\ninstitutions = ["A", "B"]\n'
    )
    cfg = load_rl_config(path, overrides={"max_steps": 3})
    assert cfg.learning_rate == 1e-4  # file beats preset
    assert cfg.max_steps == 3  # CLI beats file
    assert cfg.num_generations == 16  # preset value kept
    assert cfg.reward_scaling == "none" and cfg.lora_r == 8 and cfg.train_institutions == ["A", "B"]


def test_unknown_keys_are_named_with_suggestions(tmp_path):
    path = tmp_path / "rl.toml"
    path.write_text("[train]\nlearning_rat = 1e-4\n")
    with pytest.raises(RLConfigError, match="did you mean learning_rate"):
        load_rl_config(path)
    path.write_text("[lora]\nrank = 8\n")
    with pytest.raises(RLConfigError, match="unknown config key 'rank'"):
        load_rl_config(path)


def test_yaml_config(tmp_path):
    path = tmp_path / "rl.yaml"
    path.write_text("preset: unirg-step1\ntrain:\n  num_generations: 4\n  per_device_train_batch_size: 8\n")
    cfg = load_rl_config(path)
    assert cfg.num_generations == 4 and cfg.generation_batch_size == 8


def test_parse_override():
    assert parse_override("max_steps=10") == ("max_steps", 10)
    assert parse_override("reward.scaling=none") == ("reward_scaling", "none")
    assert parse_override("lora.r=4") == ("lora_r", 4)
    assert parse_override("train.learning_rate=1e-5") == ("learning_rate", 1e-5)
    assert parse_override("data.institutions=['A','B']") == ("train_institutions", ["A", "B"])
    assert parse_override("data.holdout=0.2") == ("holdout_fraction", 0.2)
    with pytest.raises(RLConfigError, match="key=value"):
        parse_override("max_steps")
    with pytest.raises(RLConfigError, match="did you mean"):
        parse_override("max_step=3")


def test_slots_resolve_to_substitutes_by_default_and_real_metrics_by_path(tmp_path):
    specs = {s.key: s for s in resolve_rewards(load_rl_config(preset="unirg-step1"))}
    assert specs["bertscore"].component == "embedding_cosine" and not specs["bertscore"].real
    assert specs["semb"].component == "semb_substitute" and not specs["semb"].real
    assert specs["radgraph"].component == "radgraph_substitute" and not specs["radgraph"].real
    assert specs["bleu"].component == "bleu" and specs["bleu"].real
    model = tmp_path / "bert"
    model.mkdir()
    cfg = load_rl_config(preset="unirg-step1", overrides={"bertscore_model": str(model), "bertscore_layers": 9})
    spec = {s.key: s for s in resolve_rewards(cfg)}["bertscore"]
    assert spec.component == "bertscore" and spec.real
    assert spec.options == {"model_path": str(model), "num_layers": 9}
    cfg = load_rl_config(preset="unirg-step1", overrides={"chexbert_model": str(model)})
    with pytest.raises(RLConfigError, match="no 'sembscore' reward component is registered"):
        resolve_rewards(cfg)


def test_fit_scaling_from_reference_pairs():
    cfg = load_rl_config(overrides={"reward_components": {"radgraph": 1.0, "bleu": 0.5, "chexpert_f1": 1.0},
                                    "reward_standardize": ["radgraph", "bleu"], "num_generations": 4,
                                    "per_device_train_batch_size": 4})
    specs = resolve_rewards(cfg)
    funcs = build_reward_funcs(specs)
    references = [
        "Findings: No pneumothorax. Small left pleural effusion.\nImpression: Small left effusion.",
        "Findings: Moderate cardiomegaly. Mild pulmonary edema.\nImpression: Cardiomegaly with edema.",
        "Findings: Right lower lobe consolidation.\nImpression: Right lower lobe pneumonia.",
        "Findings: The lungs are clear.\nImpression: No acute cardiopulmonary process.",
    ]
    fit_scaling(specs, funcs, references, pairs=64, seed=0)
    by_key = {s.key: s for s in specs}
    assert by_key["radgraph"].std > 0 and by_key["bleu"].std > 0
    assert by_key["chexpert_f1"].mean is None  # not standardised
    assert by_key["radgraph"].effective_weight == pytest.approx(1.0 / by_key["radgraph"].std)
    assert by_key["chexpert_f1"].effective_weight == 1.0

    # the same table as one CompositeReward: TRL's weighted sum minus the constant sum(w * mean / std)
    from unirg.trainer.rewards import composite_from_terms, trl_reward_weights

    composite = composite_from_terms(specs)
    cands = [references[1], references[0], ""]
    refs = [references[0], references[0], references[2]]
    raw = [f(cands, reference=refs) for f in funcs]
    shift = sum(s.weight * s.mean / s.std for s in specs if s.standardize)
    trl_sum = [sum(w * r[i] for w, r in zip(trl_reward_weights(specs), raw, strict=True)) for i in range(3)]
    assert composite.score(cands, refs) == pytest.approx([t - shift for t in trl_sum])


def test_zero_std_monitor_warns_after_patience(caplog):
    monitor = ZeroStdMonitor(threshold=0.5, patience=3)
    with caplog.at_level(logging.WARNING, logger="unirg.trainer.rl"):
        for value in (0.9, 0.9, 0.1, 0.9, 0.9, 0.9):
            monitor.on_log(None, None, None, logs={"frac_reward_zero_std": value})
    assert monitor.warnings == 1
    assert "no gradient" in caplog.text


def test_rloo_config_carries_the_settings():
    from trl import RLOOConfig

    cfg = load_rl_config(preset="unirg-step1", overrides={"algorithm": "rloo", "num_generations": 4,
                                                          "per_device_train_batch_size": 8, "beta": 0.05})
    trl_cfg = cfg.to_trl()
    assert isinstance(trl_cfg, RLOOConfig)
    assert (trl_cfg.num_generations, trl_cfg.learning_rate, trl_cfg.beta, trl_cfg.epsilon_high) == (4, 5e-6, 0.05,
                                                                                                   0.28)
    assert load_rl_config(preset="unirg-step1").to_trl().__class__ is RLConfig


# ---------------------------------------------------------------------------- scale configs
# These configs are for GPUs and were not run here (no GPU): they are checked to parse, and their training
# values to be accepted by GRPOConfig.


@pytest.mark.parametrize("name", ["unirg-step1", "unirg-step2", "rl-cpu-demo", "vllm-colocate", "vllm-server"])
def test_shipped_rl_configs_load(name, monkeypatch):
    monkeypatch.delenv("UNIRG_JUDGE_BASE_URL", raising=False)
    cfg = load_rl_config(CONFIGS / f"{name}.toml")
    assert isinstance(cfg, RLConfig)
    if name == "rl-cpu-demo":  # not the paper's recipe: its own clinical reward, and A/B patients held out
        assert cfg.preset is None and set(cfg.reward_components) == {"chexpert_f1", "radgraph_substitute"}
        assert cfg.holdout_fraction > 0 and cfg.train_institutions == ["A", "B"]
    else:
        assert cfg.preset in PRESETS
    assert cfg.generation_batch_size % cfg.num_generations == 0
    if name.startswith("vllm"):
        assert cfg.use_vllm is True
        assert cfg.vllm_mode == name.split("-")[1]
    if name == "unirg-step2":
        assert cfg.beta == 0.03 and cfg.judge["backend"] == "openai"


@pytest.mark.parametrize(("name", "kind"), [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("zero2", "DEEPSPEED"),
                                            ("zero3", "DEEPSPEED")])
def test_accelerate_configs_parse(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type.value == kind
    assert config.mixed_precision == "bf16"
    if name.startswith("zero"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
    if name == "fsdp":
        assert config.fsdp_config["fsdp_version"] == 2


# ---------------------------------------------------------------------------- CLI


def test_cli_dry_run_prints_settings_and_reward_table(tmp_path):
    result = CliRunner().invoke(rl, ["--preset", "unirg-step1", "--dry-run", "-G", "4", "--batch-size", "8",
                                     "--set", "lora.r=8", "--institutions", "A,B", "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    settings = json.loads(result.output[: result.output.index("\nreward terms")])
    assert settings["num_generations"] == 4 and settings["lora_r"] == 8
    assert settings["train_institutions"] == ["A", "B"] and settings["preset"] == "unirg-step1"
    assert "SUBSTITUTE for BERTScore" in result.output


def test_cli_reports_config_errors_as_usage_errors():
    result = CliRunner().invoke(rl, ["--preset", "unirg-step1", "--dry-run", "--temperature", "0"])
    assert result.exit_code == 2
    assert "greedy rollouts are identical" in result.output
