"""The domain XML parser: right types from real documents, `unknown` (never an exception) for bad ones."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from otel_vmi_hv.detection.libvirt.domain_xml import MAX_DOMAIN_XML_BYTES, DomainType, parse_domain_type
from tests.conftest import FIXTURES


@pytest.mark.parametrize(
    "fixture",
    ["domain-ocp411-cat8kv-01.xml", "domain-kubevirt-main-converter-testdata.xml"],
)
def test_real_kubevirt_domains_are_kvm(fixture: str) -> None:
    result = parse_domain_type((FIXTURES / fixture).read_bytes())
    assert (result.hypervisor_type, result.error) == ("kvm", None)


@pytest.mark.parametrize(
    ("domain_type", "expected"),
    [
        ("kvm", "kvm"),
        ("qemu", "qemu-tcg"),
        ("hyperv", "mshv"),
        ("xen", "xen"),
        ("hvf", "hvf"),
        ("lxc", "lxc"),
        ("KVM", "kvm"),
        ("Qemu", "qemu-tcg"),
        ("ch", "ch"),
    ],
)
def test_domain_type_maps_to_hypervisor_label(domain_type: str, expected: str) -> None:
    assert (
        parse_domain_type(f"<domain type='{domain_type}'><name>x</name></domain>").hypervisor_type == expected
    )


def test_live_xml_with_id_attribute_and_declaration() -> None:
    doc = "<?xml version='1.0' encoding='UTF-8'?>\n<domain type='qemu' id='7'><name>a</name></domain>"
    assert parse_domain_type(doc).hypervisor_type == "qemu-tcg"


def test_utf16_document_is_decoded_by_its_declaration() -> None:
    doc = "<?xml version='1.0' encoding='UTF-16'?><domain type='kvm'/>".encode("utf-16")
    assert parse_domain_type(doc).hypervisor_type == "kvm"


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ("<domain><name>x</name></domain>", "missing_type"),
        ("<domain type=''><name>x</name></domain>", "missing_type"),
        ("<domain type='   '/>", "missing_type"),
        ("<domain type='vmware-fusion-9'/>", "unsupported_type"),
        ("<domain type='kvm\"><script/>'/>", "malformed"),
        ("<node><domain type='kvm'/></node>", "wrong_root"),
        ("<capabilities><host/></capabilities>", "wrong_root"),
        ("<ns:domain xmlns:ns='urn:x' type='kvm'/>", "wrong_root"),
        ("<domain type='kvm'><name>x</name>", "malformed"),  # truncated
        ("<domain type='kvm'/><domain type='qemu'/>", "malformed"),
        ("", "malformed"),
        ("not xml at all", "malformed"),
        (b"<domain type='kvm'><name>\xff\xfe</name></domain>", "malformed"),  # invalid UTF-8
        ("<domain type='kvm'><name>\ud800</name></domain>", "malformed"),  # lone surrogate
    ],
)
def test_bad_documents_give_unknown_with_a_reason(document: str | bytes, error: str) -> None:
    result = parse_domain_type(document)
    assert (result.hypervisor_type, result.error) == ("unknown", error)


def test_billion_laughs_is_refused_without_expansion() -> None:
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 10)
    ]
    doc = f"<?xml version='1.0'?><!DOCTYPE domain [{''.join(entities)}]><domain type='kvm'>&lol9;</domain>"
    result = parse_domain_type(doc)  # expanded, &lol9; would be 3 GB of "lol"
    assert result.hypervisor_type == "unknown"
    assert result.error == "dtd_forbidden"


def test_external_entity_never_opens_the_file(tmp_path: Path) -> None:
    # A FIFO blocks whoever opens it for reading until a writer appears: if the parser tried to
    # resolve the entity, the call below would hang instead of returning.
    fifo = tmp_path / "secret"
    os.mkfifo(fifo)
    doc = f"<!DOCTYPE domain [<!ENTITY x SYSTEM 'file://{fifo}'>]><domain type='kvm'>&x;</domain>"
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(parse_domain_type(doc)), daemon=True)
    thread.start()
    thread.join(5)
    assert results, "parser blocked opening the external entity"
    result = results[0]
    assert isinstance(result, DomainType)
    assert (result.hypervisor_type, result.error) == ("unknown", "dtd_forbidden")


def test_parameter_entities_and_external_dtd_are_refused(tmp_path: Path) -> None:
    doc = f"<!DOCTYPE domain SYSTEM 'file://{tmp_path}/x.dtd'><domain type='kvm'/>"
    assert parse_domain_type(doc).error == "dtd_forbidden"
    doc = "<!DOCTYPE domain [<!ENTITY % p 'x'> %p;]><domain type='kvm'/>"
    assert parse_domain_type(doc).error == "dtd_forbidden"


def test_oversized_document_is_rejected_before_it_is_parsed() -> None:
    # Never closed: had it been parsed, it would be "malformed".
    doc = ("<domain type='kvm'><description>" + "x" * (50 * 1024 * 1024)).encode()
    result = parse_domain_type(doc)
    assert (result.hypervisor_type, result.error) == ("unknown", "too_large")


def test_document_just_under_the_limit_is_parsed() -> None:
    head, tail = b"<domain type='kvm'><description>", b"</description></domain>"
    doc = head + b"y" * (MAX_DOMAIN_XML_BYTES - len(head) - len(tail)) + tail
    assert parse_domain_type(doc).hypervisor_type == "kvm"
