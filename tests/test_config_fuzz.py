"""Property-based fuzzing of the config loaders (every registered method): whatever the user types
in ``--set`` or a YAML file, loading ends in a valid config or one ConfigError that names a field —
never another exception (a crash deep in a worker later)."""
from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.run import load_config
from trainers import get_method, method_keys
from trainers.common.config import ConfigError, flatten

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4), st.dictionaries(st.text(max_size=6), SCALARS, max_size=3))


def _keys(method: str) -> list[str]:
    return sorted(flatten(get_method(method).config_cls().model_dump(mode="json")))


def _check(method: str, sets: list[str]) -> None:
    try:
        cfg = load_config(method, sets=sets)
    except ConfigError as e:
        msg = str(e)
        assert msg.startswith(("invalid config:", "--set ")), msg        # names the field
        assert msg.startswith("invalid config:") or "\n" not in msg, msg  # one line per problem
        return
    # a config that loads is internally consistent: it round-trips through its own dump
    assert load_config(method, sets=[f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                                     for k, v in flatten(cfg.model_dump(mode="json")).items()
                                     if not isinstance(v, (dict, list))]) is not None


@pytest.mark.parametrize("method", method_keys())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_set_overrides_only_ever_load_or_raise_a_config_error(method, data):
    keys = _keys(method)
    picked = data.draw(st.lists(st.one_of(st.sampled_from(keys), st.text(min_size=1, max_size=15)),
                                min_size=1, max_size=4))
    sets = []
    for k in picked:
        v = data.draw(VALUES)
        raw = data.draw(st.one_of(st.just(yaml.safe_dump(v, default_flow_style=True).strip()), st.text(max_size=10)))
        sets.append(f"{k}={raw}")
    _check(method, sets)


@pytest.mark.parametrize("method", method_keys())
@settings(max_examples=30, deadline=None)
@given(doc=st.dictionaries(st.sampled_from(["seed", "train", "scaling", "tracking", "data", "model", "method", "x"]),
                           VALUES, max_size=4))
def test_yaml_config_files_only_ever_load_or_raise_a_config_error(method, doc, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        load_config(method, str(path))
    except ConfigError as e:
        assert str(e).startswith(("invalid config:", "--config ")), str(e)


@pytest.mark.parametrize("junk", ["", "=", "a", "a=", ".=1", "a..b=1", "train=1", "train.lr.x=1",
                                  "train.lr=[1", "train.lr=!!python/object:os.system ls"])
def test_malformed_set_items_are_one_config_error(junk):
    with pytest.raises(ConfigError):
        load_config("decorrelation", sets=[junk])
