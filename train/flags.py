"""Command-line flags derived from frozen config dataclasses, so each option is declared once.

A field ``seq_len`` of a config, nested at any depth, is the flag ``--seq-len``. Its type
gives the parsing (``int``, ``float``, ``str``, ``pathlib.Path``, ``X | None`` with default
``None``, ``Literal[...]`` choices, ``bool``: a switch), its default the flag's default, and
its entry in the ``Attributes:`` section of its class docstring the flag's help. A field's
``metadata`` may add ``flag`` (another name, to keep an established one), ``choices`` (the
values a ``str`` field allows) and ``shown_default`` (the default as ``--help`` tells it).

A field whose type is a union of configs (``SwanConfig | AdamConfig``) is a tagged union:
its members' ``name`` field is one flag whose choices are their names, and a field several
members have is one flag, which only those members take. A flag given that the chosen member
does not have is an error naming the members that have it.

A config checks its own fields and raises ``ConfigError``, which names the field and its
flag; ``ConfigParser`` reports it as a usage error under the flag alone.
"""

import argparse
import dataclasses
import inspect
import pathlib
import re
import types
import typing
from typing import Any
from typing import Literal
from typing import TypeVar

Config = TypeVar("Config")
_METADATA = {"flag", "choices", "shown_default"}
_PARSED = (int, float, str, pathlib.Path)


def flag(field: dataclasses.Field) -> str:
  """The flag of a config field: ``metadata["flag"]``, else ``--`` and its name in kebab-case."""
  return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


def choices(field: dataclasses.Field) -> tuple | None:
  """The values a field allows: ``metadata["choices"]``, or those of its ``Literal`` type."""
  kind = _strip_none(field.type)
  literal = typing.get_args(kind) if typing.get_origin(kind) is Literal else None
  return field.metadata.get("choices", literal)


def check_choices(config: Any) -> None:
  """Raises ``ConfigError`` for a field whose value is not one of its choices."""
  for field in dataclasses.fields(config):
    allowed, value = choices(field), getattr(config, field.name)
    if allowed is not None and value is not None and value not in allowed:
      raise ConfigError(config, field.name, f"must be one of {list(allowed)}, got {value!r}")


def members(kind: Any) -> tuple[type, ...]:
  """The configs of a tagged union type ``A | B``, told apart by their ``name``; else ``()``."""
  args = typing.get_args(kind)
  union = typing.get_origin(kind) in (typing.Union, types.UnionType)
  return args if union and all(dataclasses.is_dataclass(a) for a in args) else ()


def tag(cls: type) -> str:
  """A union member's ``name``."""
  return cls.__dataclass_fields__["name"].default


class ConfigError(ValueError):
  """A config field's invalid value, e.g. ``SwanConfig.lr must be ... (flag --lr)``."""

  def __init__(self, config: Any, field: str, problem: str):
    self.field = {f.name: f for f in dataclasses.fields(config)}[field]
    self.problem = problem
    super().__init__(f"{type(config).__name__}.{field} {problem} (flag {flag(self.field)})")


class ConfigParser(argparse.ArgumentParser):
  """An ``ArgumentParser`` whose flags are the fields of config dataclasses, a group per class."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self._owners: dict[str, str] = {}  # flag -> the field it sets, to refuse a second one

  def add_config(self, cls: type, title: str, default: Any = None) -> None:
    """Adds the flags of every field of ``cls``, nested configs flattened into their own groups.

    Args:
      cls: a dataclass whose fields all have defaults.
      title: the help's heading of the group of ``cls``'s own flags.
      default: the instance whose values are the flags' defaults; ``None``: the fields'.
    """
    group = self.add_argument_group(title, _flag_docs(cls, inspect.getdoc(cls).splitlines()[0]))
    docs = _attribute_docs(cls)
    for field in dataclasses.fields(cls):
      value = _default(field) if default is None else getattr(default, field.name)
      if dataclasses.is_dataclass(field.type):
        self.add_config(field.type, field.name, value)
      elif union := members(field.type):
        self._add_union(union, field.name, value)
      else:
        shown = field.metadata.get("shown_default", value)
        self._add_flag(group, cls, field, docs, value, f"default: {shown}")

  def _add_flag(
    self, group, cls: type, field: dataclasses.Field, docs: dict, value, note: str, **parsing
  ):
    """Adds ``field``'s flag to ``group``: its help from ``docs`` and ``note``, its parsing
    from its type unless ``parsing`` is given."""
    if unknown := set(field.metadata) - _METADATA:
      raise TypeError(f"{cls.__name__}.{field.name}: unknown metadata {sorted(unknown)}")
    name, owner = flag(field), f"{cls.__name__}.{field.name}"
    if name in self._owners:
      raise TypeError(f"{owner} and {self._owners[name]} both derive {name}: rename one")
    self._owners[name] = owner
    if field.name not in docs:
      raise TypeError(f"{owner} has no entry in the Attributes: section of its docstring")
    text = _flag_docs(cls, docs[field.name]).removesuffix(".") + f" ({note})"
    help_text = text.replace("%", "%%")
    parsing = parsing or _parsing(field)
    group.add_argument(name, dest=_dest(field), default=value, help=help_text, **parsing)

  def _add_union(self, union: tuple[type, ...], title: str, default: Any) -> None:
    """The flags of a tagged union: ``name`` chooses the member (``default``'s by default);
    each other flag is left unset unless given, and its help lists the members' defaults."""
    lines = [f"{tag(c)}: {_flag_docs(c, inspect.getdoc(c).splitlines()[0])}" for c in union]
    group = self.add_argument_group(title, "; ".join(line.removesuffix(".") for line in lines))
    fields: dict[str, list[tuple[type, dataclasses.Field]]] = {"name": []}
    for cls in union:
      for field in dataclasses.fields(cls):
        fields.setdefault(field.name, []).append((cls, field))
    for name, owners in fields.items():
      cls, field = owners[0]
      if name == "name":
        names = [tag(c) for c in union]
        value = tag(type(default))
        docs = _attribute_docs(cls)
        self._add_flag(group, cls, field, docs, value, f"default: {value}", choices=names)
        continue
      defaults = {tag(c): getattr(default if type(default) is c else c(), name) for c, _ in owners}
      values = set(map(str, defaults.values()))
      shown = (
        ", ".join(f"{n} {v}" for n, v in defaults.items()) if len(values) > 1 else values.pop()
      )
      only = "" if len(owners) == len(union) else f"{', '.join(defaults)} only; "
      docs = _attribute_docs(cls)
      self._add_flag(group, cls, field, docs, argparse.SUPPRESS, f"{only}default: {shown}")

  def config(self, cls: type[Config], args: argparse.Namespace) -> Config:
    """The ``cls`` the parsed ``args`` describe; an invalid value exits 2 naming its flag."""
    try:
      return _build(cls, args)
    except ConfigError as e:
      self.error(f"{flag(e.field)} {e.problem}")
    except ValueError as e:
      self.error(str(e))


def _build(cls: type[Config], args: argparse.Namespace) -> Config:
  values = {}
  for field in dataclasses.fields(cls):
    if dataclasses.is_dataclass(field.type):
      values[field.name] = _build(field.type, args)
    elif union := members(field.type):
      values[field.name] = _build_member(union, field, args)
    else:
      values[field.name] = getattr(args, _dest(field))
  return cls(**values)


def _build_member(union: tuple[type, ...], field: dataclasses.Field, args: argparse.Namespace):
  """The member of a tagged union that ``args`` name, from its default and the flags given."""
  default = _default(field)
  chosen = getattr(args, _dest(default.__dataclass_fields__["name"]))
  cls = next(c for c in union if tag(c) == chosen)
  given = {}
  for other in union:
    for f in dataclasses.fields(other):
      if f.name == "name" or not hasattr(args, _dest(f)):
        continue
      if f.name not in cls.__dataclass_fields__:
        having = [tag(c) for c in union if f.name in c.__dataclass_fields__]
        tag_flag = flag(cls.__dataclass_fields__["name"])
        raise ValueError(f"{flag(f)} is for {', '.join(having)} only, not {tag_flag} {chosen}")
      given[f.name] = getattr(args, _dest(f))
  return dataclasses.replace(default if type(default) is cls else cls(), **given)


def _default(field: dataclasses.Field) -> Any:
  if field.default_factory is not dataclasses.MISSING:
    return field.default_factory()
  if field.default is dataclasses.MISSING:
    raise TypeError(f"{field.name} has no default, which its flag needs")
  return field.default


def _dest(field: dataclasses.Field) -> str:
  return flag(field).removeprefix("--").replace("-", "_")


def _strip_none(kind: Any) -> Any:
  """``X`` of ``X | None``, else ``kind``."""
  args = typing.get_args(kind)
  if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
    return next(a for a in args if a is not type(None)) if len(args) == 2 else kind
  return kind


def _parsing(field: dataclasses.Field) -> dict[str, Any]:
  """``add_argument``'s keywords that parse ``field``'s type."""
  kind = _strip_none(field.type)
  if kind is bool:
    return {"action": argparse.BooleanOptionalAction if field.default else "store_true"}
  if allowed := choices(field):
    return {"choices": allowed}
  if kind in _PARSED:
    return {"type": kind}
  raise TypeError(f"{field.name}: no flag parses {field.type}; use one of {_PARSED}")


def _attribute_docs(cls: type) -> dict[str, str]:
  """The ``name: text`` entries of the ``Attributes:`` section of ``cls``'s docstring."""
  docs = {}
  for base in reversed(cls.__mro__[:-1]):  # a subclass's entry replaces its base's
    name = None
    section = inspect.cleandoc(base.__doc__ or "").partition("\nAttributes:\n")[2]
    for line in section.splitlines():
      if not line.startswith("  "):  # a blank line or the next section ends it
        break
      if entry := re.fullmatch(r"  (\w+): (.*)", line):
        name, docs[entry[1]] = entry[1], entry[2]
      else:
        docs[name] += " " + line.strip()
  return docs


def _flag_docs(cls: type, doc: str) -> str:
  """``doc`` for the command line: a ``field`` of ``cls`` as its flag, other ``code`` plain."""
  flags = _flags(cls)
  return re.sub(r"``([^`]+)``", lambda m: flags.get(m[1], m[1]), doc)


def _flags(cls: type, prefix: str = "") -> dict[str, str]:
  """Field path (e.g. ``data.seq_len``) -> flag, for ``cls`` and its nested configs."""
  paths = {}
  for field in dataclasses.fields(cls):
    if dataclasses.is_dataclass(field.type):
      paths |= _flags(field.type, f"{prefix}{field.name}.")
    elif union := members(field.type):
      for member in union:
        paths |= _flags(member, f"{prefix}{field.name}.")
    else:
      paths[prefix + field.name] = flag(field)
  return paths
