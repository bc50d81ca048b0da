"""Untrusted XML, checked before libvirt parses it.

An embedded libvirt driver's crash is our process's crash, and libvirt's parser
trusts its input more than a service on a socket may: ``<vcpu>-1</vcpu>`` makes it
allocate 32 GiB and abort, 100,000 attributes on one element keep it busy for
minutes, and an entity declared in a DOCTYPE can make it see a document other than
the one a guard of ours saw. So every document a caller sends goes through
``check`` first, which parses it with expat, with bounds, and refuses:

- what is too large, too deep, has too many elements, or too many attributes on
  one element or in all (``Limits``; the size bound is libvirt's own remote
  protocol limit for one string, so a client of libvirtd could not send more);
- any DOCTYPE (and with it every entity and attribute default: libvirt's documents
  never need one, and a DTD is where parsers disagree), an encoding other than
  UTF-8, NUL, and anything expat finds not well-formed;
- two attributes of one element with the same local name (``a`` and ``x:a``:
  libvirt's xmlGetProp ignores namespaces, so the two would be one to it).

What passes is a document libxml2 reads exactly as expat does, so the root's
attributes that ``check`` returns are the ones libvirt will see. Then libvirt's own
RelaxNG validation (the define and create calls' VALIDATE flags, always set) rejects
what the schema forbids, such as a negative vCPU count; ``submitted`` turns
libvirt's refusal of the document into INVALID_ARGUMENT; services/common/sandbox.py
parses in a throwaway child what an embedded driver would otherwise parse first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Iterator
from typing import TypeVar
from xml.parsers import expat

import grpc
import libvirt

from services.common import deadline
from services.common.errors import DocumentRejected, ServiceError, grpc_code_for


@dataclasses.dataclass(frozen=True)
class Limits:
    """How much one document may cost. The defaults are far above any real
    definition (a guest with a thousand disks is about 1 MiB and 20,000 elements)."""

    #: libvirt's VIR_NET_MESSAGE_STRING_MAX: the longest string libvirtd accepts
    max_bytes: int = 4 * 1024 * 1024
    max_depth: int = 64
    max_elements: int = 100_000
    max_attributes: int = 200_000
    max_attributes_per_element: int = 64
    #: an object's name (the root's <name> or name attribute) becomes file names
    #: (NAME.xml.new, a network's NAME.hostsfile): libvirt checks no length, and
    #: failing to write the file after starting a network, it leaves the bridge behind
    max_name_bytes: int = 200


DEFAULT_LIMITS = Limits()
T = TypeVar("T")
#: bytes fed to the parser between two looks at the caller's deadline
_CHUNK = 256 * 1024
_UTF8 = re.compile(r"utf-?8", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Document:
    """What ``check`` read: the root element and its attributes (local names)."""

    root: str
    attributes: dict[str, str]


def _invalid(field: str, why: str, reason: str = "VIR_ERR_XML_ERROR") -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {why}", reason)


def _local(name: str) -> str:
    return name.rpartition(":")[2]


class _Reader:
    """expat's callbacks, counting what the limits bound."""

    def __init__(self, field: str, limits: Limits) -> None:
        self.field = field
        self.limits = limits
        self.depth = 0
        self.elements = 0
        self.attributes = 0
        self.root: Document | None = None
        self.name: list[str] | None = None  # the text of the root's <name>, while read

    def refuse(self, why: str, reason: str = "VIR_ERR_XML_ERROR") -> None:
        raise _invalid(self.field, why, reason)

    def start(self, name: str, attributes: list[str]) -> None:
        limits = self.limits
        self.depth += 1
        self.elements += 1
        count = len(attributes) // 2
        self.attributes += count
        if self.depth > limits.max_depth:
            self.refuse(f"elements nest deeper than {limits.max_depth} levels",
                        "DOCUMENT_TOO_COMPLEX")
        if self.elements > limits.max_elements:
            self.refuse(f"more than {limits.max_elements} elements", "DOCUMENT_TOO_COMPLEX")
        if count > limits.max_attributes_per_element:
            self.refuse(f"<{name}> has {count} attributes, more than the "
                        f"{limits.max_attributes_per_element} one element may have",
                        "DOCUMENT_TOO_COMPLEX")
        if self.attributes > limits.max_attributes:
            self.refuse(f"more than {limits.max_attributes} attributes",
                        "DOCUMENT_TOO_COMPLEX")
        names = [_local(key) for key in attributes[::2]]
        if len(set(names)) != len(names):
            self.refuse(f"<{name}> has two attributes of the same local name "
                        "(libvirt ignores attribute namespaces)")
        if self.root is None:
            self.root = Document(_local(name), dict(zip(names, attributes[1::2], strict=True)))
            self.check_name(self.root.attributes.get("name", ""))
        elif self.depth == 2 and _local(name) == "name":
            self.name = []

    def text(self, data: str) -> None:
        if self.name is not None:
            self.name.append(data)

    def end(self, _name: str) -> None:
        if self.name is not None and self.depth == 2:
            self.check_name("".join(self.name))
            self.name = None
        self.depth -= 1

    def check_name(self, name: str) -> None:
        if len(name.encode("utf-8", "surrogatepass")) > self.limits.max_name_bytes:
            self.refuse(f"the name is longer than {self.limits.max_name_bytes} bytes "
                        "(libvirt makes file names of it)", "NAME_TOO_LONG")

    def doctype(self, *_args: object) -> None:
        self.refuse("a DOCTYPE is not accepted (libvirt's documents need none)",
                    "DOCTYPE_REFUSED")

    def declaration(self, _version: str | None, encoding: str | None,
                    _standalone: int) -> None:
        if encoding is not None and not _UTF8.fullmatch(encoding):
            self.refuse(f"encoding {encoding!r} is not accepted: send UTF-8")


def check(xml: str, field: str = "xml", root: str | None = None,
          limits: Limits = DEFAULT_LIMITS, fragment: bool = False) -> Document:
    """The document's root, once ``xml`` is fit to hand to libvirt (see the module's
    text); INVALID_ARGUMENT naming ``field`` and the bound otherwise. ``root``: the
    element the document must be; ``fragment``: a piece of a document (a device, a
    network section), which may not carry an XML declaration either."""
    if not xml:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"{field} is required",
                           "MISSING_FIELD")
    # a character is at least a byte: a document refused by length is not copied
    data = b"" if len(xml) > limits.max_bytes else xml.encode("utf-8", "surrogatepass")
    if len(xml) > limits.max_bytes or len(data) > limits.max_bytes:
        size = len(data) or len(xml)
        raise _invalid(field, f"the document has {'at least ' if not data else ''}{size} "
                       f"bytes, more than the {limits.max_bytes} libvirt accepts",
                       "DOCUMENT_TOO_LARGE")
    if b"\x00" in data:
        raise _invalid(field, "the document holds a NUL character")
    reader = _Reader(field, limits)
    parser = expat.ParserCreate("UTF-8")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    parser.CharacterDataHandler = reader.text
    parser.StartDoctypeDeclHandler = reader.doctype
    parser.EntityDeclHandler = reader.doctype
    parser.XmlDeclHandler = reader.declaration
    parser.ordered_attributes = True
    try:
        for start in range(0, len(data), _CHUNK):
            deadline.check("the document was read")
            parser.Parse(data[start:start + _CHUNK], False)
        parser.Parse(b"", True)
    except expat.ExpatError as error:
        raise _invalid(field, f"not well-formed XML: {expat.ErrorString(error.code)} "
                       f"at line {error.lineno}, column {error.offset + 1}") from None
    document = reader.root
    assert document is not None, "expat accepts no document without an element"
    if fragment and data.lstrip().startswith(b"<?xml"):
        raise _invalid(field, "a fragment has no XML declaration")
    if root is not None and document.root != root:
        raise _invalid(field, f"the document is <{document.root}>, expected <{root}>",
                       "VIR_ERR_XML_ERROR")
    check_deadline()
    return document


def check_deadline() -> None:
    """DEADLINE_EXCEEDED once the caller's deadline has passed: a document checked for
    a caller who has given up is not passed on to change anything."""
    deadline.check("the document was passed on to libvirt")


#: libvirt error domains whose INTERNAL_ERROR means "this document is wrong": the
#: parsers of each object's XML (domain_conf.c, network_conf.c, ...) report most of
#: their refusals so ("only a single memory balloon device", "Missing source path
#: attribute for char device", "CPU IDs in <numa> exceed the <vcpu> count")
_PARSER_DOMAINS = frozenset(
    getattr(libvirt, f"VIR_FROM_{name}") for name in (
        "DOMAIN", "NETWORK", "STORAGE", "NODEDEV", "SECRET", "NWFILTER", "INTERFACE", "XML",
        "DOMAIN_SNAPSHOT", "DOMAIN_CHECKPOINT", "CPU", "DEVICE")
    if hasattr(libvirt, f"VIR_FROM_{name}"))


@contextlib.contextmanager
def submitted() -> Iterator[None]:
    """Around the libvirt call that parses a caller's document: an internal error that
    libvirt's XML parsers report about it is the caller's mistake, not ours."""
    try:
        yield
    except libvirt.libvirtError as error:
        # what the error table already tells apart keeps its code
        if error.get_error_domain() in _PARSER_DOMAINS and grpc_code_for(
                error.get_error_code(), str(error)) == grpc.StatusCode.INTERNAL:
            raise DocumentRejected(error) from error
        raise


def submit(call: Callable[..., T], xml: str, *args: object, root: str | None = None,
           fragment: bool = False, inspect: Callable[[Document], object] | None = None
           ) -> T:
    """``call(xml, *args)`` once ``xml`` passed ``check`` (and ``inspect``, which sees
    the document as libvirt will and may refuse it), while the caller still waits;
    libvirt's refusal of the document is INVALID_ARGUMENT."""
    document = check(xml, root=root, fragment=fragment)
    if inspect is not None:
        inspect(document)
        check_deadline()
    with submitted():
        return call(xml, *args)
