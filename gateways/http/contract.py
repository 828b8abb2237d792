"""The OpenAPI schema is the contract: it states what the API accepts, and the API accepts what it states.

Request and response bodies are msgspec Structs. Litestar describes a Struct field by field and
loses what sits below the top of a field's type (the pattern and length of a list's items, a
dict's keys and values, a bound inside ``X | None``) and the unknown-field rule
(``forbid_unknown_fields``). ``StructSchemas`` describes each field by msgspec's own JSON Schema
for it, the schema of the very types that decode the request, and closes the object
(``additionalProperties: false``) when the Struct forbids unknown fields; a field whose type
names another Struct keeps Litestar's reference to that Struct's component.

Litestar decodes a body in its lax mode (``0`` or ``"true"`` for a boolean, ``"12"`` for an
integer), which the schema does not allow. ``StrictRequest`` checks a JSON body against the
handler's body type in msgspec's strict mode first (an integral number such as ``2.0`` counts as
an integer, as JSON Schema has it): what the schema refuses is a 400 naming the field, what it
allows decodes as before.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import msgspec
from litestar import Request
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.exceptions import ValidationException
from litestar.openapi.spec import OpenAPIFormat, OpenAPIType, Reference, Schema
from litestar.typing import FieldDefinition

# Schema keywords whose value is one schema, a list of schemas, or a mapping of names to schemas.
_ONE = {"not", "if", "then", "else", "items", "contains", "propertyNames", "unevaluatedItems", "contentSchema"}
_MANY = {"allOf", "anyOf", "oneOf", "prefixItems"}
_NAMED = {"properties", "patternProperties", "dependentSchemas"}
_FIELDS = {f.metadata.get("alias", f.name): f.name for f in dataclasses.fields(Schema)}


def schema_from_json(value: dict[str, Any]) -> Schema:
    """A JSON Schema (msgspec's, without references) as Litestar's ``Schema``."""
    given: dict[str, Any] = {}
    for key, item in value.items():
        if key not in _FIELDS:
            continue
        if key in _ONE:
            item = schema_from_json(item)
        elif key in _MANY:
            item = [schema_from_json(i) for i in item]
        elif key in _NAMED:
            item = {name: schema_from_json(i) for name, i in item.items()}
        elif key == "additionalProperties" and isinstance(item, dict):
            item = schema_from_json(item)
        elif key == "type":
            item = [OpenAPIType(t) for t in item] if isinstance(item, list) else OpenAPIType(item)
        elif key == "format":
            item = OpenAPIFormat(item) if item in OpenAPIFormat._value2member_map_ else item
        given[_FIELDS[key]] = item
    return Schema(**given)


def _refers(value: Any) -> bool:
    if isinstance(value, dict):
        return "$ref" in value or any(_refers(v) for v in value.values())
    if isinstance(value, list):
        return any(_refers(v) for v in value)
    return False


class StructSchemas(StructSchemaPlugin):
    """Litestar's Struct schemas, each field described by msgspec's JSON Schema for it."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        if isinstance(schema, Reference):  # pragma: no cover - the registry hands out a reference for a known type
            return schema
        struct = field_definition.type_
        try:
            (ref,), components = msgspec.json.schema_components([struct], ref_template="{name}")
        except TypeError:  # a field of a type msgspec has no schema for: Litestar's description stands
            return schema
        exact = components.get(ref.get("$ref", ""))
        if exact is None or schema.properties is None:
            return schema
        for name, described in exact.get("properties", {}).items():
            if name in schema.properties and not _refers(described):
                described = {k: v for k, v in described.items() if k != "default" or v is not None}
                schema.properties[name] = schema_from_json(described)
        info = msgspec.inspect.type_info(struct)
        if isinstance(info, msgspec.inspect.StructType) and info.forbid_unknown_fields:
            schema.additional_properties = False
        return schema


def _integral(value: Any) -> Any:
    """JSON's ``2.0`` is the integer 2 (JSON Schema says so); msgspec's strict mode wants ``2``."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


@functools.lru_cache(maxsize=256)
def _strict_decoder(annotation: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(annotation, strict=True)


class StrictRequest(Request[Any, Any, Any]):
    """A request whose JSON body is checked against the handler's body type in msgspec's strict mode."""

    async def json(self) -> Any:
        data = self.route_handler.parsed_fn_signature.parameters.get("data")
        if data is None or self.route_handler.resolve_data_dto() is not None:
            return await super().json()
        body = await self.body()
        try:
            # The usual case: the body is the type as it is. Decoded once, straight into it (the
            # handler's signature takes the instance as it is, with no second conversion).
            return _strict_decoder(data.annotation).decode(body or b"null")
        except (msgspec.ValidationError, msgspec.DecodeError, TypeError):
            pass  # an integral float, or an error to report as the schema has it (below)
        value = await super().json()
        try:
            msgspec.convert(_integral(value), data.annotation, strict=True)
        except msgspec.ValidationError as e:
            raise ValidationException(detail=str(e), extra=[{"message": str(e), "key": "data"}]) from None
        except TypeError:  # a type msgspec cannot check on its own: Litestar's decoding decides
            pass
        return value
