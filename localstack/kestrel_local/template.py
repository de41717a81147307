"""Read any SAM template: CloudFormation YAML tags, parameters, conditions and intrinsics.

`load_template` parses the file, `Stack` resolves intrinsic functions against parameter
values and the physical names of the resources the local platform provisions. Errors
name the resource and the property at fault.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_ACCOUNT_ID = "123456789012"

_SHORT_TAGS = {
    "Ref": "Ref",
    "Condition": "Condition",
    "GetAtt": "Fn::GetAtt",
    "Sub": "Fn::Sub",
    "Join": "Fn::Join",
    "Select": "Fn::Select",
    "Split": "Fn::Split",
    "If": "Fn::If",
    "Equals": "Fn::Equals",
    "Not": "Fn::Not",
    "And": "Fn::And",
    "Or": "Fn::Or",
    "FindInMap": "Fn::FindInMap",
    "Base64": "Fn::Base64",
    "GetAZs": "Fn::GetAZs",
    "ImportValue": "Fn::ImportValue",
}


class TemplateError(ValueError):
    """The template cannot be read or resolved; the message names the resource or key."""


class _CfnLoader(yaml.SafeLoader):
    """A YAML loader that turns CloudFormation short tags into their long form."""


def _construct_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = _SHORT_TAGS.get(suffix)
    if name is None:
        raise TemplateError(
            f"unknown CloudFormation tag !{suffix} at line {node.start_mark.line + 1}"
        )
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if name == "Fn::GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: str | Path) -> dict[str, Any]:
    """Parse a SAM/CloudFormation template file, with a clear error on bad YAML or shape."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TemplateError(f"{path}: cannot read template ({exc.strerror})") from None
    try:
        document = yaml.load(text, Loader=_CfnLoader)
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("Resources"), dict):
        raise TemplateError(f"{path}: a template needs a 'Resources' mapping")
    for logical_id, resource in document["Resources"].items():
        if not isinstance(resource, dict) or not isinstance(resource.get("Type"), str):
            raise TemplateError(f"{path}: resource {logical_id}: needs a 'Type'")
    return document


@dataclass(frozen=True, slots=True)
class PhysicalResource:
    """What Ref and Fn::GetAtt return for one provisioned resource."""

    ref: str
    attributes: Mapping[str, str] = field(default_factory=dict)


def physical_name(stack_name: str, logical_id: str, kind: str) -> str:
    """Name a resource that the template leaves unnamed, the way a stack would (stable)."""
    name = f"{stack_name}-{logical_id}"
    return name.lower() if kind == "AWS::S3::Bucket" else name


@dataclass
class Stack:
    """A template bound to a stack name, region, account and parameter values."""

    template: Mapping[str, Any]
    stack_name: str = "kestrel"
    region: str = "us-east-1"
    account_id: str = DEFAULT_ACCOUNT_ID
    parameter_overrides: Mapping[str, str] = field(default_factory=dict)
    physical: dict[str, PhysicalResource] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.parameters = self._parameter_values()
        self._conditions: dict[str, bool] = {}

    @property
    def resources(self) -> Mapping[str, Mapping[str, Any]]:
        """The template's resources by logical id."""
        resources: Mapping[str, Mapping[str, Any]] = self.template["Resources"]
        return resources

    def _parameter_values(self) -> dict[str, str]:
        declared: Mapping[str, Any] = self.template.get("Parameters") or {}
        unknown = sorted(set(self.parameter_overrides) - set(declared))
        if unknown:
            raise TemplateError(
                f"parameter override for undeclared parameter(s): {', '.join(unknown)}"
            )
        values: dict[str, str] = {}
        for name, spec in declared.items():
            if name in self.parameter_overrides:
                values[name] = str(self.parameter_overrides[name])
            elif isinstance(spec, dict) and "Default" in spec:
                values[name] = str(spec["Default"])
            else:
                raise TemplateError(f"parameter {name}: no Default and no override given")
            allowed = spec.get("AllowedValues") if isinstance(spec, dict) else None
            if allowed and values[name] not in [str(v) for v in allowed]:
                raise TemplateError(f"parameter {name}: {values[name]!r} is not one of {allowed}")
        return values

    def _parameter(self, name: str) -> str | list[str]:
        """A parameter's value; list types (CommaDelimitedList, List<...>) are lists."""
        declared = (self.template.get("Parameters") or {}).get(name)
        kind = str(declared.get("Type", "")) if isinstance(declared, dict) else ""
        value = self.parameters[name]
        if kind == "CommaDelimitedList" or kind.startswith("List<"):
            return value.split(",")
        return value

    def pseudo(self, name: str) -> str | None:
        """The value of a pseudo parameter, or None when `name` is not one."""
        return {
            "AWS::StackName": self.stack_name,
            "AWS::Region": self.region,
            "AWS::AccountId": self.account_id,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": f"arn:aws:cloudformation:{self.region}:{self.account_id}:stack/"
            f"{self.stack_name}/local",
        }.get(name)

    def condition(self, name: str, where: str) -> bool:
        """Evaluate a named condition of the template's Conditions section."""
        if name not in self._conditions:
            conditions: Mapping[str, Any] = self.template.get("Conditions") or {}
            if name not in conditions:
                raise TemplateError(f"{where}: unknown condition {name!r}")
            self._conditions[name] = bool(self.resolve(conditions[name], f"Conditions.{name}"))
        return self._conditions[name]

    def resource_enabled(self, logical_id: str) -> bool:
        """False when the resource carries a Condition that evaluates to false."""
        cond = self.resources[logical_id].get("Condition")
        return True if cond is None else self.condition(str(cond), logical_id)

    def resolve(self, value: Any, where: str) -> Any:
        """Resolve every intrinsic function in `value`; `where` names the spot for errors."""
        if isinstance(value, list):
            resolved = [self.resolve(item, where) for item in value]
            return [item for item in resolved if item is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            handler = _INTRINSICS.get(key)
            if handler is not None:
                return handler(self, arg, where)
        out = {}
        for key, item in value.items():
            resolved = self.resolve(item, f"{where}.{key}")
            if resolved is not _NO_VALUE:
                out[key] = resolved
        return out

    def ref(self, name: str, where: str) -> Any:
        """What `Ref: name` means in this stack."""
        if name == "AWS::NoValue":
            return _NO_VALUE
        pseudo = self.pseudo(name)
        if pseudo is not None:
            return pseudo
        if name in self.parameters:
            return self._parameter(name)
        if name in self.physical:
            return self.physical[name].ref
        if name in self.resources:
            raise TemplateError(f"{where}: Ref {name}: resource is not provisioned locally")
        raise TemplateError(f"{where}: Ref {name}: no such parameter or resource")

    def get_att(self, logical_id: str, attribute: str, where: str) -> str:
        """What `Fn::GetAtt: [logical_id, attribute]` means in this stack."""
        if logical_id not in self.resources:
            raise TemplateError(f"{where}: Fn::GetAtt {logical_id}.{attribute}: no such resource")
        physical = self.physical.get(logical_id)
        if physical is None or attribute not in physical.attributes:
            raise TemplateError(
                f"{where}: Fn::GetAtt {logical_id}.{attribute}: attribute not available locally"
            )
        return physical.attributes[attribute]


class _NoValue:
    """The marker AWS::NoValue resolves to; removed from lists and mappings."""


_NO_VALUE: Any = _NoValue()
_SUB_VAR = re.compile(r"\$\{([^}!][^}]*)\}")


def _fn_ref(stack: Stack, arg: Any, where: str) -> Any:
    return stack.ref(str(arg), where)


def _fn_get_att(stack: Stack, arg: Any, where: str) -> str:
    if isinstance(arg, str):
        arg = arg.split(".", 1)
    if not isinstance(arg, list) or len(arg) != 2:
        raise TemplateError(f"{where}: Fn::GetAtt needs [LogicalId, Attribute]")
    return stack.get_att(str(arg[0]), str(stack.resolve(arg[1], where)), where)


def _fn_sub(stack: Stack, arg: Any, where: str) -> str:
    variables: Mapping[str, Any] = {}
    if isinstance(arg, list):
        if len(arg) != 2 or not isinstance(arg[1], dict):
            raise TemplateError(f"{where}: Fn::Sub list form needs [String, {{Variables}}]")
        text, variables = str(arg[0]), stack.resolve(arg[1], where)
    else:
        text = str(arg)

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1).strip()
        if name in variables:
            return str(variables[name])
        if "." in name and not name.startswith("AWS::"):
            logical_id, attribute = name.split(".", 1)
            return stack.get_att(logical_id, attribute, where)
        return str(stack.ref(name, where))

    return _SUB_VAR.sub(substitute, text).replace("${!", "${")


def _fn_join(stack: Stack, arg: Any, where: str) -> str:
    if not isinstance(arg, list) or len(arg) != 2:
        raise TemplateError(f"{where}: Fn::Join needs [Delimiter, [Values]]")
    values = stack.resolve(arg[1], where)
    if not isinstance(values, list):
        raise TemplateError(f"{where}: Fn::Join values must be a list")
    return str(arg[0]).join(str(v) for v in values)


def _fn_select(stack: Stack, arg: Any, where: str) -> Any:
    if not isinstance(arg, list) or len(arg) != 2:
        raise TemplateError(f"{where}: Fn::Select needs [Index, [Values]]")
    index, values = int(stack.resolve(arg[0], where)), stack.resolve(arg[1], where)
    if not isinstance(values, list) or not 0 <= index < len(values):
        raise TemplateError(f"{where}: Fn::Select index {index} out of range")
    return values[index]


def _fn_split(stack: Stack, arg: Any, where: str) -> list[str]:
    if not isinstance(arg, list) or len(arg) != 2:
        raise TemplateError(f"{where}: Fn::Split needs [Delimiter, String]")
    return str(stack.resolve(arg[1], where)).split(str(arg[0]))


def _fn_if(stack: Stack, arg: Any, where: str) -> Any:
    if not isinstance(arg, list) or len(arg) != 3:
        raise TemplateError(f"{where}: Fn::If needs [Condition, IfTrue, IfFalse]")
    chosen = arg[1] if stack.condition(str(arg[0]), where) else arg[2]
    return stack.resolve(chosen, where)


def _fn_equals(stack: Stack, arg: Any, where: str) -> bool:
    if not isinstance(arg, list) or len(arg) != 2:
        raise TemplateError(f"{where}: Fn::Equals needs [A, B]")
    left, right = (stack.resolve(v, where) for v in arg)
    return str(left) == str(right)


def _fn_not(stack: Stack, arg: Any, where: str) -> bool:
    if not isinstance(arg, list) or len(arg) != 1:
        raise TemplateError(f"{where}: Fn::Not needs [Condition]")
    return not bool(stack.resolve(arg[0], where))


def _fn_and(stack: Stack, arg: Any, where: str) -> bool:
    return all(bool(stack.resolve(v, where)) for v in _as_list(arg, "Fn::And", where))


def _fn_or(stack: Stack, arg: Any, where: str) -> bool:
    return any(bool(stack.resolve(v, where)) for v in _as_list(arg, "Fn::Or", where))


def _fn_condition(stack: Stack, arg: Any, where: str) -> bool:
    return stack.condition(str(arg), where)


def _fn_find_in_map(stack: Stack, arg: Any, where: str) -> Any:
    keys = [str(stack.resolve(v, where)) for v in _as_list(arg, "Fn::FindInMap", where)]
    try:
        mappings: Mapping[str, Any] = stack.template["Mappings"]
        return mappings[keys[0]][keys[1]][keys[2]]
    except (KeyError, IndexError, TypeError):
        raise TemplateError(f"{where}: Fn::FindInMap {keys}: no such entry") from None


def _as_list(arg: Any, name: str, where: str) -> list[Any]:
    if not isinstance(arg, list):
        raise TemplateError(f"{where}: {name} needs a list")
    return arg


def _unsupported(name: str) -> Any:
    def fail(stack: Stack, arg: Any, where: str) -> Any:
        raise TemplateError(f"{where}: {name} is not supported by the local runtime")

    return fail


_INTRINSICS = {
    "Ref": _fn_ref,
    "Fn::GetAtt": _fn_get_att,
    "Fn::Sub": _fn_sub,
    "Fn::Join": _fn_join,
    "Fn::Select": _fn_select,
    "Fn::Split": _fn_split,
    "Fn::If": _fn_if,
    "Fn::Equals": _fn_equals,
    "Fn::Not": _fn_not,
    "Fn::And": _fn_and,
    "Fn::Or": _fn_or,
    "Condition": _fn_condition,
    "Fn::FindInMap": _fn_find_in_map,
    "Fn::Base64": _unsupported("Fn::Base64"),
    "Fn::GetAZs": _unsupported("Fn::GetAZs"),
    "Fn::ImportValue": _unsupported("Fn::ImportValue"),
}
