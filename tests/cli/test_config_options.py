"""Commands whose options come from config dataclasses: every field is an option, with its default and help."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from zutiscli.cli.app import app
from zutiscli.cli.from_config import ConfigValues, from_config
from zutiscli.config_fields import field_default, not_an_option, option, option_spec
from zutiscli.data.copypaste_config import CopyPasteConfig
from zutiscli.errors import UsageError
from zutiscli.pipeline.copypaste_config import CopyPasteDatasetConfig
from zutiscli.data.prepare_config import PrepareConfig
from zutiscli.pipeline.demo_config import COMMAND_DEFAULTS as DEMO_DEFAULTS, FAST, DemoConfig
from zutiscli.pipeline.cluster_config import ClusterConfig
from zutiscli.pipeline.evaluate_config import EvaluateConfig
from zutiscli.pipeline.index_config import IndexConfig
from zutiscli.pipeline.predict_config import PredictConfig
from zutiscli.pipeline.pseudolabel_config import PseudolabelConfig
from zutiscli.pipeline.retrieve_config import RetrieveConfig
from zutiscli.pipeline.synth_config import SynthConfig, command_defaults
from zutiscli.pipeline.train_config import TrainConfig

SCENES_ONLY = {"min_objects", "max_objects", "panoptic"}

#: (command, config, fields that are options of the config but deliberately not of this command,
#: defaults of this command that differ from the dataclass's)
CONVERTED = [
    ("index build", IndexConfig, set(), {}),
    ("retrieve", RetrieveConfig, set(), {}),
    ("synth pile", SynthConfig, SCENES_ONLY, command_defaults("pile")),
    ("synth scenes", SynthConfig, set(), command_defaults("scenes")),
    ("synth pairs", SynthConfig, SCENES_ONLY | {"split"}, command_defaults("pairs")),
    ("copypaste", CopyPasteConfig, set(), {}),
    ("copypaste", CopyPasteDatasetConfig, set(), {}),
    ("predict run", PredictConfig, set(), {}),
    ("evaluate run", EvaluateConfig, set(), {}),
    ("evaluate prepare", PrepareConfig, set(), {}),
    ("pseudolabel run", PseudolabelConfig, set(), {}),
    ("cluster", ClusterConfig, set(), {}),
    ("train", TrainConfig, set(), {}),
    ("demo", DemoConfig, set(), DEMO_DEFAULTS),
]


def _command(path: str):
    command = typer.main.get_command(app)
    for name in path.split():
        command = command.commands[name]
    return command


def _options_by_flag(command) -> dict[str, object]:
    return {flag: param for param in command.params for flag in [*param.opts, *getattr(param, "secondary_opts", [])]}


def _listed(value):
    return list(value) if isinstance(value, tuple) else value


def _declared(spec, name: str) -> set[str]:
    """The names an option declares, a boolean's ``--on/--off`` pair as two."""
    return {part for names in spec.names(name) for part in names.split("/")}


@pytest.mark.parametrize(("path", "config", "left_out", "defaults"), CONVERTED,
                         ids=[f"{path}-{config.__name__}" for path, config, _, _ in CONVERTED])
def test_every_config_field_is_an_option_with_its_default_and_help(path, config, left_out, defaults):
    command = _command(path)
    options = _options_by_flag(command)
    for field in dataclasses.fields(config):
        spec = option_spec(field)  # raises for a field declared with neither option() nor not_an_option()
        if spec is None:  # deliberately no option (the command may fill the field from its own parameters)
            continue
        if field.name in left_out:
            assert not _declared(spec, field.name) & set(options), f"{path}: {field.name} is an option"
            continue
        default = defaults.get(field.name, field_default(field))
        if spec.parts:
            for number, (flag, help_text) in enumerate(spec.parts):
                assert flag in options, f"{path}: no option {flag} for {config.__name__}.{field.name}"
                assert options[flag].default == default[number], f"{path} {flag}"
                assert help_text.strip() and options[flag].help == help_text
            continue
        flag = spec.names(field.name)[0].split("/")[0]
        assert flag in options, f"{path}: no option {flag} for {config.__name__}.{field.name}"
        param = options[flag]
        assert {*param.opts, *param.secondary_opts} == _declared(spec, field.name), f"{path} {flag}: {param.opts}"
        if default is dataclasses.MISSING:
            assert param.required, f"{path} {flag}: the config requires it, the command does not"
        else:
            shown = spec.text(default) if spec.text else default
            assert param.default == shown, f"{path} {flag}: default {param.default!r}, config says {shown!r}"
            if spec.text and shown is not None:
                back = spec.parse(shown)  # a list for a tuple default is the same value
                assert _listed(back) == _listed(default), f"{path} {flag}: {shown!r} does not parse back to {default!r}"
        assert spec.help.strip() and param.help == spec.help, f"{path} {flag}: help {param.help!r}"


def test_predict_inference_settings_default_to_the_recipe_and_name_the_papers_value():
    from zutiscli.engine.inference import FIELDS, PAPER

    fields = {field.name: field for field in dataclasses.fields(PredictConfig)}
    for name in FIELDS:  # every inference setting is an option of zutis predict, not given by default
        assert field_default(fields[name]) is None, name
        value = getattr(PAPER, name)
        shown = ("on" if value else "off") if isinstance(value, bool) else value
        assert option_spec(fields[name]).help.endswith(f"Default: the model's training recipe, else {shown} (the paper)."), name


def test_evaluate_list_options_read_and_write_the_text_the_user_types():
    from zutiscli.pipeline.evaluate_config import MAX_DETS, class_map_text, parse_class_map, parse_max_dets, parse_tasks

    assert parse_tasks("auto") == parse_tasks(" ") == [] and parse_tasks("all") == ["instance", "semantic", "panoptic"]
    assert parse_tasks("semantic, instance") == ["semantic", "instance"]
    assert parse_class_map(class_map_text({"tv": "television", "sofa": "couch"})) == {"tv": "television", "sofa": "couch"}
    assert parse_max_dets("1, 10,100") == list(MAX_DETS)
    with pytest.raises(UsageError, match=r"--max-dets '1,x': give three integers, e.g. 1,10,100"):
        parse_max_dets("1,x")


def test_every_benchmark_the_command_offers_has_a_preparer():
    from zutiscli.data.datasets import PREPARERS
    from zutiscli.data.prepare_config import DATASETS

    assert tuple(PREPARERS) == DATASETS


def test_config_modules_import_neither_torch_nor_numpy():
    # the command line imports them to build --help and completion, which must answer at once
    import subprocess
    import sys

    modules = ["zutiscli.pipeline.predict_config", "zutiscli.pipeline.evaluate_config", "zutiscli.data.prepare_config",
               "zutiscli.pipeline.pseudolabel_config", "zutiscli.pipeline.train_config",
               "zutiscli.pipeline.demo_config", "zutiscli.pipeline.cluster_config"]
    code = ("import sys\n" + "".join(f"import {name}\n" for name in modules)
            + "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_pseudolabel_method_choices_and_sizes_come_from_the_registry():
    from zutiscli.methods.pseudolabel import get_labeller, labeller_names

    options = _options_by_flag(_command("pseudolabel run"))
    assert options["--method"].metavar == "|".join(labeller_names())
    for name in labeller_names():
        labeller = get_labeller(name)
        if labeller.needs == "features":
            assert f"{labeller.default_size} {name}" in options["--size"].help, name


def test_train_takes_its_copy_paste_defaults_from_copypaste():
    assert TrainConfig().copypaste() == CopyPasteConfig()


def test_train_flags_override_the_recipe_even_at_their_defaults_and_its_values_the_defaults(tmp_path, monkeypatch):
    import zutiscli.pipeline.train as stage

    planned = []

    def plan(config, output=None, resume=None):
        planned.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(stage, "plan_training", plan)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("iterations: 7\nbatch_size: 3\nscale_min: 0.2\n", encoding="utf-8")
    done = CliRunner().invoke(app, ["train", str(tmp_path), "--config", str(recipe), "--batch-size", "8", "--dry-run"])
    assert done.exit_code == 0, done.output
    config = planned.pop()
    assert (config.iterations, config.batch_size, config.scale_min) == (7, 8, 0.2)  # --batch-size 8 is the default
    assert (config.crop, config.source) == (TrainConfig.crop, str(tmp_path))


def test_demo_options_given_as_defaults_leave_the_fast_preset_alone():
    from zutiscli.pipeline.demo_config import preset

    assert set(DEMO_DEFAULTS) == {"pile", "scenes", "k", "stuff_scenes"} <= set(FAST)
    fast = preset(True, **{name: None for name in DEMO_DEFAULTS})
    assert (fast.pile, fast.scenes, fast.k, fast.stuff_scenes) == (FAST["pile"], FAST["scenes"], FAST["k"],
                                                                   FAST["stuff_scenes"])
    assert preset(False, k=7).k == 7


def test_a_field_without_help_cannot_become_an_option():
    with pytest.raises(ValueError, match="help"):
        option(3)
    with pytest.raises(ValueError, match="kind 'file'"):
        option(None, "A file.", kind="file")
    with pytest.raises(ValueError, match="needs parse"):
        option((1, 2), "Sizes.", text=str)

    @dataclass
    class Undeclared:
        size: int = 3

    with pytest.raises(TypeError, match="'size'.*neither option"):
        from_config(Undeclared, into="options")(lambda options=None: None)


# ---- the generator on a config of its own ----------------------------------------------------
def _parse_pair(text: str) -> tuple[int, int]:
    left, _, right = text.partition("x")
    if not (left.isdigit() and right.isdigit()):
        raise UsageError(f"--grid {text!r}: expected WxH")
    return int(left), int(right)


def _parse_renames(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(","))


def _renames_text(renames: dict[str, str]) -> str | None:
    return ",".join(f"{old}={new}" for old, new in renames.items()) or None


@dataclass(frozen=True)
class ToyConfig:
    name: str = not_an_option(why="the command's argument")
    size: int = option(8, "Side in pixels.", short="-s")
    grid: tuple[int, int] | None = option(None, "Grid as WxH.", metavar="WxH", parse=_parse_pair, show_default=False)
    listing: str | None = option(None, "A file of names.", kind="path")
    span: tuple[float, float] = option((0.1, 0.9), parts=(("--low", "Lowest."), ("--high", "Highest.")))
    mode: str = option("fast", "How.", flag=("-m", "--mode"), choices=("fast", "exact"))
    secret: int = option(1, "Not shown.", hidden=True)
    levels: tuple[int, ...] = option((1, 10), "Levels.", parse=lambda text: tuple(map(int, text.split(","))),
                                     text=lambda levels: ",".join(map(str, levels)))
    renames: dict = option(help="Renames.", default_factory=dict, parse=_parse_renames, text=_renames_text)
    quality: int = not_an_option(90)


def _toy_app(received: list) -> typer.Typer:
    toy = typer.Typer(add_completion=False)  # typer's completion would replace zutis' own, process-wide

    @toy.command()
    @from_config(ToyConfig, into="options", defaults={"size": 16})
    def make(name: Annotated[str, typer.Argument(help="A name.")], options: ConfigValues = None,
             verbose: Annotated[bool, typer.Option("--verbose")] = False) -> None:
        """Make a toy."""
        received.append((ToyConfig(name=name, **options), verbose))

    @toy.command()
    def other() -> None:
        """Keeps `make` a subcommand."""

    return toy


def test_generated_options_parse_into_the_config(tmp_path):
    received: list = []
    toy = _toy_app(received)
    runner = CliRunner()
    done = runner.invoke(toy, ["make", "box"])
    assert done.exit_code == 0, done.output
    assert received.pop() == (ToyConfig(name="box", size=16), False)  # the command's default for size

    listing = tmp_path / "names.txt"
    done = runner.invoke(toy, ["make", "box", "-s", "4", "--grid", "3x2", "--listing", str(listing), "--low", "0.2",
                               "--high", "0.5", "-m", "exact", "--secret", "7", "--verbose"])
    assert done.exit_code == 0, done.output
    config, verbose = received.pop()
    assert config == ToyConfig(name="box", size=4, grid=(3, 2), listing=str(listing), span=(0.2, 0.5), mode="exact",
                               secret=7)
    assert isinstance(config.listing, str) and verbose is True

    done = runner.invoke(toy, ["make", "box", "--levels", "2,3", "--renames", "a=b"])
    assert done.exit_code == 0, done.output
    assert received.pop()[0] == ToyConfig(name="box", size=16, levels=(2, 3), renames={"a": "b"})

    done = runner.invoke(toy, ["make", "box", "--grid", "3"])
    assert isinstance(done.exception, UsageError) and "expected WxH" in str(done.exception)


def test_generated_options_in_help_keep_the_field_order_and_presentation():
    command = typer.main.get_command(_toy_app([])).commands["make"]
    names = [param.name for param in command.params]
    assert names == ["name", "size", "grid", "listing", "low", "high", "mode", "secret", "levels", "renames", "verbose"]
    params = {param.name: param for param in command.params}
    assert params["size"].opts == ["--size", "-s"] and params["size"].default == 16
    assert params["mode"].opts == ["-m", "--mode"] and params["mode"].metavar == "fast|exact"
    assert params["grid"].metavar == "WxH" and params["grid"].show_default is False
    assert params["secret"].hidden
    assert params["levels"].default == "1,10" and params["renames"].default is None  # the defaults as typed
    assert [item.value for item in params["mode"].shell_complete(None, "e")] == ["exact"]


def test_train_clip_options_take_their_defaults_from_the_recipe() -> None:
    """`zutis synth train-clip` writes its options by hand; each default is TrainClipConfig's, so the
    command line and the Python API train the same recipe (evaluation and checkpoints included)."""
    from zutiscli.shapes.clip_recipe import TrainClipConfig

    recipe = {field.name: field_default(field) for field in dataclasses.fields(TrainClipConfig)}
    params = {param.name: param for param in _command("synth train-clip").params}
    shared = sorted(set(params) & set(recipe))
    assert {"eval_pool", "checkpoint_every", "steps", "varied", "dense"} <= set(shared)
    assert {name: params[name].default for name in shared} == {name: recipe[name] for name in shared}
