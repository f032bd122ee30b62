#!/usr/bin/env python3
"""Writes helm/kubestow/values.schema.json, which Helm checks the values
against before it renders the chart (install, upgrade, template, lint).
The patterns follow what kubestow accepts at run time: a repository
(src/config: s3://bucket[/prefix] with S3's bucket rules, or
file:///absolute/path) and STOW_RATE_LIMIT (src/config/rate.rs, sizes as
the bytesize crate parses them); `helm::schema_rate_limit_pattern_agrees_with_kubestow`
compares the latter with kubestow's own parser.

    python3 tests/helm/gen_schema.py           # rewrite the schema
    python3 tests/helm/gen_schema.py --check   # exit 1 if it is stale
"""
import json
import os
import re
import sys

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "helm", "kubestow", "values.schema.json")

def ci(word):
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word)

DAY = "(" + "|".join(ci(d) for d in ["mon","tue","wed","thu","fri","sat","sun"]) + ")"
DAYS = f"{DAY}(-{DAY})?(\\+{DAY}(-{DAY})?)*"
CLOCK = "(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)"
SPAN = f"{CLOCK}-{CLOCK}"
WHEN = f"(\\*|{DAYS}(\\s+{SPAN})?|{SPAN})"
UNIT = "([KkMmGgTtPpEe][Ii]?[Bb]?|[Bb])"
SIZE = f"([0-9]+|([0-9]+(\\.[0-9]*)?|\\.[0-9]+)\\s*{UNIT})"
RATE = f"({ci('unlimited')}|{SIZE}(/s)?)"
RULE = f"\\s*({WHEN}\\s*=\\s*)?{RATE}\\s*"
RATE_LIMIT = f"^{RULE}(,{RULE})*$"

DNS = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
REPO = "^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|file:///.*[^/].*)$"
HHMM = "^([01]?[0-9]|2[0-3]):[0-5][0-9]$"
HHMM24 = "^(([01]?[0-9]|2[0-3]):[0-5][0-9]|24:00)$"

boolish = {"anyOf": [{"type": "boolean"}, {"type": "string", "enum": ["", "true", "false"]}]}
str_or_list = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
hooks = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]}
nonneg = {"type": "integer", "minimum": 0}
obj = {"type": "object"}
repo = {"$ref": "#/definitions/repository"}
repo_or_empty = {"anyOf": [{"type": "string", "maxLength": 0}, {"$ref": "#/definitions/repository"}]}

def schedule(desc):
    return {"description": desc, "$ref": "#/definitions/schedule"}

SCHEDULE = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "type": {"type": "string", "enum": ["immediate", "once", "hourly", "daily", "weekly", "monthly", "cron"]},
            "at": {"type": "string", "pattern": HHMM},
            "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}$"},
            "every": {"type": "integer", "minimum": 1},
            "everyMinutes": {"type": "integer", "minimum": 1, "maximum": 59},
            "from": {"type": "string", "pattern": HHMM24},
            "to": {"type": "string", "pattern": HHMM24},
            "days": {"type": "array", "items": {"type": ["string", "integer"]}},
            "weekdays": {"type": "array", "items": {"type": "string"}},
            "months": {"type": "array", "items": {"type": ["string", "integer"]}},
            "cron": {"type": "string", "minLength": 1},
            "randomize": {"type": "boolean"},
            "spreadHours": {"type": "integer", "minimum": 1, "maximum": 24},
            "timeZone": {"type": "string"},
        },
    }

JOB = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "startingDeadlineSeconds": nonneg,
        "backoffLimit": nonneg,
        "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
        "ttlSecondsAfterFinished": nonneg,
        "successfulJobsHistoryLimit": nonneg,
        "failedJobsHistoryLimit": nonneg,
        "podFailurePolicy": {"anyOf": [{"type": "boolean"}, {"type": "string", "enum": ["auto", "true", "false"]}]},
    },
}

job = {"$ref": "#/definitions/job"}

plan = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": DNS, "maxLength": 52},
        "schedule": schedule("when the plan runs (README \"Schedules\")"),
        "repository": repo,
        "existingSecret": {"type": "string"},
        "namespaces": str_or_list,
        "excludeNamespaces": {"type": "string"},
        "includeResources": {"type": "string"},
        "excludeResources": {"type": "string"},
        "labelSelector": {"type": "string"},
        "includeClusterResources": {"anyOf": [{"type": "boolean"}, {"type": "string", "enum": ["auto", "true", "false"]}]},
        "volumeSource": {"type": "string", "enum": ["auto", "snapshot", "kubelet", "skip"]},
        "excludeVolumes": {"type": "string"},
        "channels": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 255},
                               {"type": "string", "pattern": "^([1-9][0-9]?|1[0-9]{2}|2[0-4][0-9]|25[0-5])$"}]},
        "rateLimit": {"anyOf": [{"type": "integer", "minimum": 1},
                                {"type": "string", "maxLength": 0},
                                {"$ref": "#/definitions/rateLimit"}]},
        "tags": str_or_list,
        "precondition": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}, {"type": "object"}]},
        "preHooks": hooks,
        "postHooks": hooks,
        "compression": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 19},
                                  {"type": "string", "pattern": "^(none|fast|[1-9]|1[0-9])$"}]},
        "init": boolish,
        "retention": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "keepLast": nonneg, "keepHourly": nonneg, "keepDaily": nonneg,
                "keepWeekly": nonneg, "keepMonthly": nonneg, "keepYearly": nonneg,
                "schedule": schedule("when the prune runs"),
            },
        },
        "env": obj,
        "suspend": {"type": "boolean"},
        "resources": obj,
        "job": job,
        "alertAfterHours": {"type": "integer", "minimum": 1},
    },
}

sa = {"type": "object", "additionalProperties": False,
      "properties": {"name": {"type": "string"}, "annotations": obj}}

schema = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "kubestow chart values",
    "description": "Checked by Helm on install, upgrade, template and lint. Rejects what kubestow would refuse at run time where a schema can tell; the templates check the rest (and fail with a message).",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "global": obj,
        "image": {"type": "object", "additionalProperties": False, "properties": {
            "repository": {"type": "string", "minLength": 1},
            "tag": {"type": "string"},
            "pullPolicy": {"type": "string", "enum": ["Always", "IfNotPresent", "Never"]}}},
        "imagePullSecrets": {"type": "array"},
        "repository": repo_or_empty,
        "secret": {"type": "object", "additionalProperties": False, "properties": {
            "existingSecret": {"type": "string"},
            "password": {"type": "string"},
            "env": obj}},
        "env": obj,
        "caBundle": {"type": "object", "additionalProperties": False, "properties": {
            "configMap": {"type": "string"},
            "secret": {"type": "string"},
            "key": {"type": "string", "minLength": 1}}},
        "prometheusRule": {"type": "object", "additionalProperties": False, "properties": {
            "enabled": {"type": "boolean"},
            "labels": obj,
            "cluster": {"type": "string"},
            "severity": {"type": "string", "minLength": 1},
            "successMaxAgeHours": {"type": "integer", "minimum": 1},
            "durationGrowthFactor": {"type": "number", "exclusiveMinimum": 1},
            "durationWindow": {"type": "string", "pattern": "^[0-9]+[smhdwy]$"},
            "durationMinSeconds": nonneg}},
        "timeZone": {"type": "string"},
        "randomizeSeed": {"type": ["string", "integer"]},
        "serviceAccounts": {"type": "object", "additionalProperties": False, "properties": {
            "backup": sa, "restore": sa, "mover": sa}},
        "job": job,
        "resources": obj,
        "podSecurityContext": obj,
        "securityContext": obj,
        "nodeSelector": obj,
        "tolerations": {"type": "array"},
        "affinity": obj,
        "podAnnotations": obj,
        "podLabels": obj,
        "plans": {"type": ["array", "null"], "items": {"$ref": "#/definitions/plan"}},
        "check": {"type": "object", "additionalProperties": False, "properties": {
            "enabled": {"type": "boolean"},
            "schedule": schedule("when the check runs"),
            "readData": {"type": "string", "pattern": "^(|all|[0-9]+(\\.[0-9]+)?%)$"}}},
        "restore": {"type": "object", "additionalProperties": False, "properties": {
            "enabled": {"type": "boolean"},
            "namespaces": {"type": "array", "items": {"type": "string", "pattern": DNS}},
            "template": {"type": "object", "additionalProperties": False, "properties": {
                "repository": repo_or_empty,
                "snapshot": {"type": "string"},
                "restorePoint": {"type": "string"},
                "namespaces": {"type": "string"},
                "namespaceMap": {"type": "string"},
                "storageClassMap": {"type": "string"},
                "sourceCluster": {"type": "string"},
                "existing": {"type": "string", "enum": ["skip", "update", "recreate"]},
                "existingClusterResources": {"type": "string", "enum": ["skip", "update", "recreate"]},
                "allowHostVolumes": {"type": "string"},
                "dryRun": boolish,
                "restoreVolumes": boolish,
                "env": obj}}}},
        "copy": {"type": "object", "additionalProperties": False, "properties": {
            "enabled": {"type": "boolean"},
            "schedule": schedule("when the copy runs"),
            "toRepository": repo_or_empty,
            "init": boolish,
            "plan": {"type": "string"}}},
    },
    "definitions": {
        "repository": {"type": "string", "pattern": REPO,
                       "description": "s3://bucket[/prefix] or file:///absolute/path"},
        "schedule": SCHEDULE,
        "job": JOB,
        "rateLimit": {"type": "string", "pattern": RATE_LIMIT,
                      "description": "STOW_RATE_LIMIT: 50MiB, 500KB/s, unlimited, or windows such as mon-fri 09:00-18:00=10MiB,*=200MiB"},
        "plan": plan,
    },
    "allOf": [
        {
            "description": "A repository: the chart's, or every plan's own with check and copy off and the restore template's own.",
            "anyOf": [
                {"required": ["repository"], "properties": {"repository": {"minLength": 1}}},
                {"properties": {
                    "plans": {"type": ["array", "null"], "items": {"required": ["repository"]}},
                    "check": {"properties": {"enabled": {"const": False}}},
                    "copy": {"properties": {"enabled": {"const": False}}},
                    "restore": {"anyOf": [
                        {"properties": {"enabled": {"const": False}}},
                        {"required": ["template"], "properties": {"template": {
                            "required": ["repository"], "properties": {"repository": {"minLength": 1}}}}}]}}},
            ],
        },
        {
            "description": "copy.enabled needs copy.toRepository.",
            "if": {"required": ["copy"], "properties": {"copy": {"required": ["enabled"], "properties": {"enabled": {"const": True}}}}},
            "then": {"properties": {"copy": {"required": ["toRepository"], "properties": {"toRepository": {"minLength": 1}}}}},
        },
    ],
}

text = json.dumps(schema, indent=2) + "\n"
if sys.argv[1:] == ["--check"]:
    with open(OUT) as f:
        current = f.read()
    if current != text:
        print("helm/kubestow/values.schema.json is stale: run python3 tests/helm/gen_schema.py")
        sys.exit(1)
else:
    with open(OUT, "w") as f:
        f.write(text)
