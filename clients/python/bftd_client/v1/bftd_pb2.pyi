from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RejectCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REJECT_CODE_UNSPECIFIED: _ClassVar[RejectCode]
    BUSY: _ClassVar[RejectCode]
    EXPIRED: _ClassVar[RejectCode]
    TOO_LARGE: _ClassVar[RejectCode]
    BAD_SIGNATURE: _ClassVar[RejectCode]
    WRONG_CLIENT: _ClassVar[RejectCode]
    TOO_FAR_AHEAD: _ClassVar[RejectCode]
    MALFORMED: _ClassVar[RejectCode]
    UNSUPPORTED_MODE: _ClassVar[RejectCode]
REJECT_CODE_UNSPECIFIED: RejectCode
BUSY: RejectCode
EXPIRED: RejectCode
TOO_LARGE: RejectCode
BAD_SIGNATURE: RejectCode
WRONG_CLIENT: RejectCode
TOO_FAR_AHEAD: RejectCode
MALFORMED: RejectCode
UNSUPPORTED_MODE: RejectCode

class SubmitRequest(_message.Message):
    __slots__ = ("signed_request",)
    SIGNED_REQUEST_FIELD_NUMBER: _ClassVar[int]
    signed_request: bytes
    def __init__(self, signed_request: _Optional[bytes] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("receipt", "rejection")
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    REJECTION_FIELD_NUMBER: _ClassVar[int]
    receipt: Receipt
    rejection: Rejection
    def __init__(self, receipt: _Optional[_Union[Receipt, _Mapping]] = ..., rejection: _Optional[_Union[Rejection, _Mapping]] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("request_id", "code", "message")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    code: RejectCode
    message: str
    def __init__(self, request_id: _Optional[int] = ..., code: _Optional[_Union[RejectCode, str]] = ..., message: _Optional[str] = ...) -> None: ...

class Vote(_message.Message):
    __slots__ = ("signer", "signature")
    SIGNER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    signer: int
    signature: bytes
    def __init__(self, signer: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class CommitCertificate(_message.Message):
    __slots__ = ("view", "seq", "digest", "votes")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    VOTES_FIELD_NUMBER: _ClassVar[int]
    view: int
    seq: int
    digest: bytes
    votes: _containers.RepeatedCompositeFieldContainer[Vote]
    def __init__(self, view: _Optional[int] = ..., seq: _Optional[int] = ..., digest: _Optional[bytes] = ..., votes: _Optional[_Iterable[_Union[Vote, _Mapping]]] = ...) -> None: ...

class MerkleProof(_message.Message):
    __slots__ = ("index", "count", "siblings")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SIBLINGS_FIELD_NUMBER: _ClassVar[int]
    index: int
    count: int
    siblings: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, index: _Optional[int] = ..., count: _Optional[int] = ..., siblings: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("request_id", "height", "prev_hash", "batch_digest", "proof", "certificate")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    BATCH_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    height: int
    prev_hash: bytes
    batch_digest: bytes
    proof: MerkleProof
    certificate: CommitCertificate
    def __init__(self, request_id: _Optional[int] = ..., height: _Optional[int] = ..., prev_hash: _Optional[bytes] = ..., batch_digest: _Optional[bytes] = ..., proof: _Optional[_Union[MerkleProof, _Mapping]] = ..., certificate: _Optional[_Union[CommitCertificate, _Mapping]] = ...) -> None: ...

class DeliverRequest(_message.Message):
    __slots__ = ("from_height",)
    FROM_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    from_height: int
    def __init__(self, from_height: _Optional[int] = ...) -> None: ...

class Block(_message.Message):
    __slots__ = ("height", "prev_hash", "batch_digest", "requests", "duplicates", "certificate")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    BATCH_DIGEST_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    height: int
    prev_hash: bytes
    batch_digest: bytes
    requests: _containers.RepeatedScalarFieldContainer[bytes]
    duplicates: _containers.RepeatedScalarFieldContainer[int]
    certificate: CommitCertificate
    def __init__(self, height: _Optional[int] = ..., prev_hash: _Optional[bytes] = ..., batch_digest: _Optional[bytes] = ..., requests: _Optional[_Iterable[bytes]] = ..., duplicates: _Optional[_Iterable[int]] = ..., certificate: _Optional[_Union[CommitCertificate, _Mapping]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("id", "n", "f", "view", "in_view_change", "primary", "height", "head_hash", "stable_checkpoint", "pending_requests", "request_mode", "byzantine", "peers_in_touch", "quorum", "request_lifetime")
    ID_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    F_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    IN_VIEW_CHANGE_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    STABLE_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PENDING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_MODE_FIELD_NUMBER: _ClassVar[int]
    BYZANTINE_FIELD_NUMBER: _ClassVar[int]
    PEERS_IN_TOUCH_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    REQUEST_LIFETIME_FIELD_NUMBER: _ClassVar[int]
    id: int
    n: int
    f: int
    view: int
    in_view_change: bool
    primary: int
    height: int
    head_hash: str
    stable_checkpoint: int
    pending_requests: int
    request_mode: str
    byzantine: str
    peers_in_touch: int
    quorum: int
    request_lifetime: int
    def __init__(self, id: _Optional[int] = ..., n: _Optional[int] = ..., f: _Optional[int] = ..., view: _Optional[int] = ..., in_view_change: _Optional[bool] = ..., primary: _Optional[int] = ..., height: _Optional[int] = ..., head_hash: _Optional[str] = ..., stable_checkpoint: _Optional[int] = ..., pending_requests: _Optional[int] = ..., request_mode: _Optional[str] = ..., byzantine: _Optional[str] = ..., peers_in_touch: _Optional[int] = ..., quorum: _Optional[int] = ..., request_lifetime: _Optional[int] = ...) -> None: ...
