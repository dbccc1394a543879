"""template.yaml: cfn-lint runs clean, and what SAM generates from it is as narrow as it says.

The SAM transform runs offline here (samtranslator, bundled managed-policy map), and the
assertions read the generated CloudFormation: the function, its version and alias, and the IAM
role's inline policy. ``Fn::Sub`` strings are resolved with the parameters' defaults.
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from samtranslator.yaml_helper import yaml_parse

import secretboot

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
PSEUDO = {"AWS::Partition": "aws", "AWS::Region": "us-east-1", "AWS::AccountId": "123456789012"}
KEY_ARN = {"Fn::GetAtt": ["Key", "Arn"]}
# The IAM resource and PARAMETER_ARN pattern, exactly as written in the template.
PATH_ARN = "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/${AppName}/${Stage}/*"
# Shaped like real KMS ciphertext (base64 AQICAH...), for the SecretKeyCiphertext parameter.
SAMPLE_CIPHERTEXT = base64.b64encode(bytes.fromhex("0102020078") + bytes(179)).decode()


def _sam() -> dict[str, Any]:
    template: dict[str, Any] = yaml_parse(TEMPLATE.read_text())
    return template


def _defaults(template: dict[str, Any]) -> dict[str, str]:
    return {name: param.get("Default", "") for name, param in template["Parameters"].items()}


def _resolve(value: Any, params: dict[str, str]) -> str:
    """A literal, a Ref to a parameter, or an Fn::Sub over parameters and pseudo parameters."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and list(value) == ["Ref"]:
        return params[value["Ref"]]
    if isinstance(value, dict) and list(value) == ["Fn::Sub"] and isinstance(value["Fn::Sub"], str):
        names = {**PSEUDO, **params}

        def substitute(match: re.Match[str]) -> str:
            if match[1] not in names:
                raise AssertionError(f"cannot resolve ${{{match[1]}}} in {value}")
            return names[match[1]]

        return re.sub(r"\$\{([^}!]+)\}", substitute, value["Fn::Sub"])
    raise AssertionError(f"cannot resolve {value!r}")


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, item in node.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _translate(template: dict[str, Any], params: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the SAM transform offline: local code folders become s3:// placeholders first."""
    template = copy.deepcopy(template)
    for logical_id, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        for field in ("CodeUri", "ContentUri"):
            if isinstance(props.get(field), str) and not props[field].startswith("s3://"):
                props[field] = f"s3://placeholder-bucket/{logical_id}.zip"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", PSEUDO["AWS::Region"])
        # No IAM look-ups: SAM's bundled managed-policy map covers the names it adds.
        translated: dict[str, Any] = Translator(None, Parser()).translate(
            template, parameter_values=dict(params or {}), get_managed_policy_map=lambda: {}
        )
    return translated


def _one(resources: dict[str, Any], kind: str) -> tuple[str, dict[str, Any]]:
    found = [(name, res) for name, res in resources.items() if res["Type"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {[name for name, _ in found]}"
    return found[0]


@pytest.fixture(scope="module")
def sam() -> dict[str, Any]:
    return _sam()


@pytest.fixture(scope="module")
def params(sam: dict[str, Any]) -> dict[str, str]:
    return _defaults(sam)


@pytest.fixture(scope="module")
def resources(sam: dict[str, Any]) -> dict[str, Any]:
    translated: dict[str, Any] = _translate(sam)["Resources"]
    return translated


@pytest.fixture(scope="module")
def function(resources: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = _one(resources, "AWS::Lambda::Function")[1]["Properties"]
    return props


@pytest.fixture(scope="module")
def statements(resources: dict[str, Any], function: dict[str, Any]) -> list[dict[str, Any]]:
    """Every statement of the function role's inline policies."""
    role_id = function["Role"]["Fn::GetAtt"][0]
    role = resources[role_id]["Properties"]
    found: list[dict[str, Any]] = []
    for policy in role.get("Policies", []):
        found.extend(policy["PolicyDocument"]["Statement"])
    return found


def _by_sid(statements: list[dict[str, Any]], sid: str) -> dict[str, Any]:
    matches = [s for s in statements if s.get("Sid") == sid]
    assert len(matches) == 1, f"expected one statement {sid}"
    return matches[0]


def test_cfn_lint_is_clean() -> None:
    # cfn-lint has no `python -m` entry: run its console-script entry point with this interpreter.
    launcher = (
        "import sys; from importlib.metadata import entry_points; "
        "(script,) = entry_points(group='console_scripts', name='cfn-lint'); sys.exit(script.load()())"
    )
    run = subprocess.run(
        [sys.executable, "-c", launcher, "template.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == ""


def test_local_code_folders_exist(sam: dict[str, Any]) -> None:
    resources = sam["Resources"]
    code = ROOT / resources["Function"]["Properties"]["CodeUri"]
    assert (code / "app.py").is_file()
    # The function's own imports (Powertools) are packaged from its requirements.txt.
    function_requirements = [
        line.strip() for line in (code / "requirements.txt").read_text().splitlines() if line.strip()
    ]
    assert any(line.startswith("aws-lambda-powertools") for line in function_requirements)
    # The layer is built by its makefile (secretboot --no-deps, plus requirements.txt), so that
    # boto3 and botocore, which the runtime has, stay out; tests/test_deploy_artifacts.py builds it.
    layer = resources["SecretbootLayer"]
    folder = ROOT / layer["Properties"]["ContentUri"]
    assert layer["Metadata"]["BuildMethod"] == "makefile"
    assert "build-SecretbootLayer:" in (folder / "Makefile").read_text()
    lines = [line.strip() for line in (folder / "requirements.txt").read_text().splitlines()]
    names = {re.split(r"[<>=!~ \[]", line)[0].lower() for line in lines if line and line[0] != "#"}
    assert names == {"python-dotenv", "cryptography"}


def test_role_grants_exactly_decrypt_and_get_parameters(
    resources: dict[str, Any], function: dict[str, Any], statements: list[dict[str, Any]]
) -> None:
    assert sorted(s["Sid"] for s in statements) == [
        "DecryptAppParametersViaSsm",
        "DecryptFunctionSecrets",
        "ReadAppParameters",
    ]
    for statement in statements:
        assert statement["Effect"] == "Allow"
        assert statement["Action"] in (["kms:Decrypt"], ["ssm:GetParameters"])
        assert "NotAction" not in statement and "NotResource" not in statement
        assert statement["Resource"] != "*" and "*" not in _strings(statement["Resource"])
        assert statement["Resource"] != ["*"]
    # SAM adds only the logs policy; nobody slipped in a broad managed policy.
    role = resources[function["Role"]["Fn::GetAtt"][0]]["Properties"]
    assert [_resolve(arn, {}) for arn in role["ManagedPolicyArns"]] == [
        "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
    ]


def test_kms_decrypt_is_bound_to_the_key_and_this_function(
    function: dict[str, Any], statements: list[dict[str, Any]], params: dict[str, str]
) -> None:
    statement = _by_sid(statements, "DecryptFunctionSecrets")
    assert statement["Action"] == ["kms:Decrypt"]
    assert statement["Resource"] == KEY_ARN
    assert list(statement["Condition"]) == ["StringEquals"]
    condition = statement["Condition"]["StringEquals"]
    assert list(condition) == ["kms:EncryptionContext:LambdaFunctionName"]
    expected = _resolve(function["FunctionName"], params)
    assert expected == "secretboot-example-prod"
    assert _resolve(condition["kms:EncryptionContext:LambdaFunctionName"], params) == expected
    # ... and pinned: bootstrap() passes this KeyId to every Decrypt.
    assert function["Environment"]["Variables"]["SECRETBOOT_KMS_KEY_ID"] == KEY_ARN


def test_ssm_read_is_limited_to_the_app_path(
    statements: list[dict[str, Any]], params: dict[str, str]
) -> None:
    statement = _by_sid(statements, "ReadAppParameters")
    assert statement["Action"] == ["ssm:GetParameters"]
    assert "Condition" not in statement
    assert statement["Resource"] == {"Fn::Sub": PATH_ARN}
    arn = _resolve(statement["Resource"], params)
    assert arn == "arn:aws:ssm:us-east-1:123456789012:parameter/secretboot-example/prod/*"
    assert "parameter//" not in arn


def test_kms_decrypt_for_secure_strings_only_through_ssm(
    statements: list[dict[str, Any]], params: dict[str, str]
) -> None:
    statement = _by_sid(statements, "DecryptAppParametersViaSsm")
    assert statement["Action"] == ["kms:Decrypt"]
    assert statement["Resource"] == KEY_ARN
    condition = statement["Condition"]
    assert sorted(condition) == ["StringEquals", "StringLike"]
    assert list(condition["StringEquals"]) == ["kms:ViaService"]
    assert _resolve(condition["StringEquals"]["kms:ViaService"], params) == "ssm.us-east-1.amazonaws.com"
    # SSM encrypts each SecureString with encryption context PARAMETER_ARN=<the parameter's ARN>.
    assert condition["StringLike"] == {"kms:EncryptionContext:PARAMETER_ARN": {"Fn::Sub": PATH_ARN}}
    assert "parameter//" not in _resolve(
        condition["StringLike"]["kms:EncryptionContext:PARAMETER_ARN"], params
    )


def test_function_runtime_architecture_and_snapstart(
    resources: dict[str, Any], function: dict[str, Any], sam: dict[str, Any]
) -> None:
    runtime = re.fullmatch(r"python3\.(\d+)", function["Runtime"])
    assert runtime is not None and int(runtime[1]) >= 12, "SnapStart needs python3.12 or newer"
    assert function["Architectures"] == ["arm64"]
    assert function["Handler"] == "app.handler"
    assert function["SnapStart"] == {"ApplyOn": "PublishedVersions"}
    assert _one(resources, "AWS::Lambda::Alias")[1]["Properties"]["Name"] == "live"
    _one(resources, "AWS::Lambda::Version")
    # A new layer (or any property change) must publish a version, or "live" keeps the old one.
    assert sam["Resources"]["Function"]["Properties"]["AutoPublishAliasAllProperties"] is True
    assert sam["Resources"]["SecretbootLayer"]["Properties"]["PublishLambdaVersion"] is True
    layer = sam["Resources"]["SecretbootLayer"]
    assert layer["Properties"]["CompatibleRuntimes"] == [function["Runtime"]]
    assert layer["Properties"]["CompatibleArchitectures"] == function["Architectures"]
    assert layer["Metadata"]["BuildArchitecture"] == function["Architectures"][0]
    # The makefile's wheels are for the function's Python and platform.
    makefile = (ROOT / layer["Properties"]["ContentUri"] / "Makefile").read_text()
    version = function["Runtime"].removeprefix("python")
    platforms = {"arm64": "manylinux2014_aarch64", "x86_64": "manylinux2014_x86_64"}
    platform = platforms[function["Architectures"][0]]
    assert re.search(rf"^PYTHON \?= python{re.escape(version)}$", makefile, re.M)
    assert re.search(rf"^PYTHON_VERSION \?= {re.escape(version)}$", makefile, re.M)
    assert re.search(rf"^PLATFORM \?= {platform}$", makefile, re.M)


def test_environment_holds_references_not_secrets(function: dict[str, Any], params: dict[str, str]) -> None:
    env = function["Environment"]["Variables"]
    assert _resolve(env["SECRET_KEY"], params).startswith("kms:")
    assert _resolve(env["API_TOKEN"], params) == "ssm:/secretboot-example/prod/api-token"
    assert env["POWERTOOLS_SERVICE_NAME"] == {"Ref": "AppName"}


def test_no_dynamic_references_anywhere(sam: dict[str, Any]) -> None:
    # CloudFormation would resolve {{resolve:...}} itself, before secretboot sees it.
    assert not any("{{resolve:" in text for text in _strings(sam))
    assert "{{resolve:" not in TEMPLATE.read_text()


def test_secret_key_parameter_takes_kms_ciphertext(sam: dict[str, Any], params: dict[str, str]) -> None:
    param = sam["Parameters"]["SecretKeyCiphertext"]
    assert param["NoEcho"] is True
    pattern = re.compile(param["AllowedPattern"])
    assert pattern.fullmatch(SAMPLE_CIPHERTEXT)
    assert not pattern.fullmatch("kms:" + SAMPLE_CIPHERTEXT)  # the template adds the prefix itself
    # With a real value, the deployed SECRET_KEY parses as a KMS reference.
    env = _translate(sam, {"SecretKeyCiphertext": SAMPLE_CIPHERTEXT})
    variables = _one(env["Resources"], "AWS::Lambda::Function")[1]["Properties"]["Environment"]["Variables"]
    value = _resolve(variables["SECRET_KEY"], {**params, "SecretKeyCiphertext": SAMPLE_CIPHERTEXT})
    reference = secretboot.parse_reference(value, variable="SECRET_KEY")
    assert isinstance(reference, secretboot.KmsReference)


def test_every_ssm_reference_is_readable_under_the_policy(
    function: dict[str, Any], statements: list[dict[str, Any]], params: dict[str, str]
) -> None:
    """A renamed parameter cannot drift out of the policy unnoticed."""
    read = _resolve(_by_sid(statements, "ReadAppParameters")["Resource"], params)
    via_ssm = _by_sid(statements, "DecryptAppParametersViaSsm")["Condition"]["StringLike"]
    decrypt = _resolve(via_ssm["kms:EncryptionContext:PARAMETER_ARN"], params)
    prefix = f"arn:aws:ssm:{PSEUDO['AWS::Region']}:{PSEUDO['AWS::AccountId']}:parameter"
    checked = 0
    for variable, raw in function["Environment"]["Variables"].items():
        if isinstance(raw, dict) and "Fn::GetAtt" in raw:
            continue
        value = _resolve(raw, params)
        if not value.startswith("ssm:"):
            continue
        reference = secretboot.parse_reference(value, variable=variable)
        assert isinstance(reference, secretboot.SsmReference)
        name = reference.parameter_name
        assert name.startswith("/"), f"{variable}: use a full /path/name so the ARN is exact"
        arn = prefix + name
        # IAM's "*" matches any characters, "/" included, as fnmatch's does.
        assert fnmatch.fnmatchcase(arn, read), f"{variable}: {name} is outside {read}"
        assert fnmatch.fnmatchcase(arn, decrypt), f"{variable}: {name} is outside {decrypt}"
        checked += 1
    assert checked >= 1
