from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PromptGuardCalculatorOptions(_message.Message):
    __slots__ = ("blocked_words", "blocked_words_file", "case_sensitive", "checked_fields", "style_suffix")
    BLOCKED_WORDS_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_WORDS_FILE_FIELD_NUMBER: _ClassVar[int]
    CASE_SENSITIVE_FIELD_NUMBER: _ClassVar[int]
    CHECKED_FIELDS_FIELD_NUMBER: _ClassVar[int]
    STYLE_SUFFIX_FIELD_NUMBER: _ClassVar[int]
    blocked_words: _containers.RepeatedScalarFieldContainer[str]
    blocked_words_file: str
    case_sensitive: bool
    checked_fields: _containers.RepeatedScalarFieldContainer[str]
    style_suffix: str
    def __init__(self, blocked_words: _Optional[_Iterable[str]] = ..., blocked_words_file: _Optional[str] = ..., case_sensitive: _Optional[bool] = ..., checked_fields: _Optional[_Iterable[str]] = ..., style_suffix: _Optional[str] = ...) -> None: ...
