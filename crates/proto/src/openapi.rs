//! OpenAPI 3.0 documents of rumor's HTTP APIs, generated from the code: each
//! API lists its routes (a [`Route`] table next to its router), and every
//! body's schema comes from the `.proto` types themselves, in the proto3
//! JSON mapping the APIs speak (64-bit integers as strings, enums by name,
//! `bytes` as base64). Nothing is written twice: a field added to a message
//! appears in every document that uses it.

use std::collections::BTreeMap;

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};
use serde_json::{Value, json};

/// The compiled `.proto` files.
const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// How a route answers.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    /// Nothing (the route takes no body).
    None,
    /// A JSON body of a `rumor.api.v1` message (its short name).
    Json(&'static str),
    /// Newline-delimited JSON, one message per line.
    Ndjson(&'static str),
    /// Plain text.
    Text,
}

/// A parameter in the path or the query.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// Its name.
    pub name: &'static str,
    /// `path`, `query` or `header`.
    pub location: &'static str,
    /// A JSON schema type: `string` or `integer`.
    pub kind: &'static str,
    /// What it means.
    pub description: &'static str,
    /// The values it may take, when they are few (empty: any).
    pub values: &'static [&'static str],
}

/// `after`: the paging cursor every paginated route takes.
pub const PAGE_AFTER: Param = Param {
    name: "after",
    location: "query",
    kind: "integer",
    description: "The cursor of the last entry of the previous page",
    values: &[],
};

/// `limit`: the page size every paginated route takes.
pub const PAGE_LIMIT: Param = Param {
    name: "limit",
    location: "query",
    kind: "integer",
    description: "Entries per page, 1 to 1000",
    values: &[],
};

/// One route of an API.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// `get` or `post`.
    pub method: &'static str,
    /// The path with `{param}` placeholders.
    pub path: &'static str,
    /// One line on what it does.
    pub summary: &'static str,
    /// Path and query parameters.
    pub params: &'static [Param],
    /// The request body.
    pub request: Body,
    /// The success response: its status and body.
    pub ok: (u16, Body),
    /// Error statuses the route may answer, each with a text or JSON body.
    pub errors: &'static [u16],
}

fn descriptors() -> FileDescriptorSet {
    // Generated at build time from the same files; decoding cannot fail.
    FileDescriptorSet::decode(DESCRIPTORS).unwrap_or_default()
}

/// Every message and enum of package `rumor.api.v1`, by short name.
struct Types {
    messages: BTreeMap<String, DescriptorProto>,
    enums: BTreeMap<String, EnumDescriptorProto>,
}

fn api_types() -> Types {
    let mut t = Types {
        messages: BTreeMap::new(),
        enums: BTreeMap::new(),
    };
    for file in descriptors().file.into_iter().filter(|f| f.package() == "rumor.api.v1") {
        for m in file.message_type {
            t.messages.insert(m.name().to_owned(), m);
        }
        for e in file.enum_type {
            t.enums.insert(e.name().to_owned(), e);
        }
    }
    t
}

fn short(type_name: &str) -> &str {
    type_name.rsplit('.').next().unwrap_or(type_name)
}

/// The JSON schema of one field's value, in the proto3 JSON mapping.
fn value_schema(f: &prost_types::FieldDescriptorProto) -> Value {
    match f.r#type() {
        Type::String => json!({"type": "string"}),
        Type::Bytes => json!({"type": "string", "format": "byte"}),
        Type::Bool => json!({"type": "boolean"}),
        Type::Double | Type::Float => json!({"type": "number"}),
        Type::Int32 | Type::Sint32 | Type::Sfixed32 => json!({"type": "integer", "format": "int32"}),
        Type::Uint32 | Type::Fixed32 => json!({"type": "integer", "format": "int32", "minimum": 0}),
        // 64-bit integers travel as decimal strings; numbers are accepted too.
        Type::Int64 | Type::Sint64 | Type::Sfixed64 => {
            json!({"oneOf": [{"type": "string", "pattern": "^-?[0-9]+$"}, {"type": "integer"}]})
        }
        Type::Uint64 | Type::Fixed64 => {
            json!({"oneOf": [{"type": "string", "pattern": "^[0-9]+$"}, {"type": "integer", "minimum": 0}]})
        }
        Type::Enum | Type::Message | Type::Group => {
            json!({"$ref": format!("#/components/schemas/{}", short(f.type_name()))})
        }
    }
}

fn message_schema(m: &DescriptorProto) -> Value {
    let mut properties = serde_json::Map::new();
    for f in &m.field {
        // A map field is a repeated entry message with key and value.
        let entry = (f.r#type() == Type::Message)
            .then(|| m.nested_type.iter().find(|n| n.name() == short(f.type_name())))
            .flatten()
            .filter(|n| n.options.as_ref().is_some_and(|o| o.map_entry()));
        let schema = if let Some(entry) = entry {
            let value = entry.field.iter().find(|v| v.name() == "value").map(value_schema);
            json!({"type": "object", "additionalProperties": value.unwrap_or(json!({}))})
        } else if f.label() == Label::Repeated {
            json!({"type": "array", "items": value_schema(f)})
        } else if f.r#type() == Type::Message || f.proto3_optional() {
            // Absent messages and unset optional fields are null.
            let mut s = value_schema(f);
            if s.get("$ref").is_some() {
                s = json!({"allOf": [s]});
            }
            s["nullable"] = json!(true);
            s
        } else {
            value_schema(f)
        };
        properties.insert(f.name().to_owned(), schema);
    }
    json!({"type": "object", "properties": properties})
}

fn enum_schema(e: &EnumDescriptorProto) -> Value {
    let names: Vec<&str> = e.value.iter().map(|v| v.name()).collect();
    json!({"type": "string", "enum": names})
}

fn body_content(body: Body) -> Option<Value> {
    let schema = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    match body {
        Body::None => None,
        Body::Json(name) => Some(json!({"application/json": {"schema": schema(name)}})),
        Body::Ndjson(name) => Some(json!({"application/x-ndjson": {"schema": schema(name)}})),
        Body::Text => Some(json!({"text/plain": {"schema": {"type": "string"}}})),
    }
}

/// The OpenAPI 3.0 document of an API named `title` with `routes`.
pub fn document(title: &str, description: &str, routes: &[Route]) -> Value {
    let types = api_types();
    let mut paths = serde_json::Map::new();
    for r in routes {
        let mut op = json!({
            "summary": r.summary,
            "operationId": format!("{}{}", r.method, r.path.replace(['/', '{', '}', '-'], "_")),
            "responses": {},
        });
        let params: Vec<Value> = r
            .params
            .iter()
            .map(|p| {
                let mut schema = json!({"type": p.kind});
                if !p.values.is_empty() {
                    schema["enum"] = json!(p.values);
                }
                json!({
                    "name": p.name,
                    "in": p.location,
                    "required": p.location == "path",
                    "description": p.description,
                    "schema": schema,
                })
            })
            .collect();
        if !params.is_empty() {
            op["parameters"] = json!(params);
        }
        if let Some(content) = body_content(r.request) {
            op["requestBody"] = json!({"required": true, "content": content});
        }
        let (status, ok) = r.ok;
        let mut ok_response = json!({"description": "success"});
        if let Some(content) = body_content(ok) {
            ok_response["content"] = content;
        }
        op["responses"][status.to_string()] = ok_response;
        for e in r.errors {
            op["responses"][e.to_string()] = json!({"description": "refused or failed; the body says why"});
        }
        let entry = paths.entry(r.path.to_owned()).or_insert_with(|| json!({}));
        entry[r.method] = op;
    }
    let mut schemas = serde_json::Map::new();
    for (name, m) in &types.messages {
        schemas.insert(name.clone(), message_schema(m));
    }
    for (name, e) in &types.enums {
        schemas.insert(name.clone(), enum_schema(e));
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": title, "version": "1", "description": description},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_follow_the_json_mapping_of_the_proto_types() {
        let doc = document(
            "t",
            "d",
            &[Route {
                method: "post",
                path: "/v1/send",
                summary: "s",
                params: &[],
                request: Body::Json("SendRequest"),
                ok: (200, Body::Ndjson("ReplyLine")),
                errors: &[400],
            }],
        );
        let s = &doc["components"]["schemas"];
        assert_eq!(s["SendRequest"]["properties"]["key"]["type"], "string");
        assert_eq!(s["SendRequest"]["properties"]["timeout_ms"]["nullable"], true);
        assert_eq!(
            s["Member"]["properties"]["status"]["$ref"],
            "#/components/schemas/MemberStatus"
        );
        assert_eq!(s["MemberStatus"]["enum"][1], "MEMBER_STATUS_ALIVE");
        assert_eq!(s["Member"]["properties"]["services"]["type"], "object");
        assert_eq!(s["Members"]["properties"]["members"]["type"], "array");
        assert!(doc["paths"]["/v1/send"]["post"]["requestBody"].is_object());
    }
}
