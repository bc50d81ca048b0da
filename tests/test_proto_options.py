"""Every .proto names its generated code in other languages, by one rule per option,
so that protoc-gen-go and friends need no per-file mapping flags. protos/buf.yaml
leaves these options out of `buf breaking` (they were all unset before): this test
keeps them from changing instead."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from google.protobuf.descriptor import FileDescriptor

import virtmesh

GO_MODULE = "github.com/virtmesh/virtmesh/clients/go"


def files() -> list[FileDescriptor]:
    modules = [m.name for m in pkgutil.walk_packages(virtmesh.__path__, "virtmesh.")
               if m.name.endswith("_pb2")]
    return [importlib.import_module(name).DESCRIPTOR for name in sorted(modules)]


def test_every_proto_is_checked() -> None:
    drivers = {file.package.split(".")[1] for file in files()}
    assert {"acl", "compute", "gateway", "storage", "network", "nwfilter", "secret",
            "nodedev", "iface"} <= drivers


@pytest.mark.parametrize("file", files(), ids=lambda file: file.name)
def test_file_options(file: FileDescriptor) -> None:
    _, driver, version = file.package.split(".")
    stem = file.name.rsplit("/", 1)[1].removesuffix(".proto")
    title = driver.capitalize()
    options = file.GetOptions()
    assert options.go_package == f"{GO_MODULE}/gen/virtmesh/{driver}/{version};{driver}{version}"
    assert options.java_package == f"io.github.virtmesh.{driver}.{version}"
    assert options.java_multiple_files
    assert options.java_outer_classname == "".join(
        word.capitalize() for word in stem.split("_")) + "Proto"
    assert options.csharp_namespace == f"Virtmesh.{title}.{version.upper()}"
    assert options.php_namespace == f"Virtmesh\\{title}\\{version.upper()}"
    assert options.ruby_package == f"Virtmesh::{title}::{version.upper()}"
