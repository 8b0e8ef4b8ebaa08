"""The one error the local stack raises: something a developer has to act on."""


class DevstackError(Exception):
    """A missing prerequisite or a component that did not come up; the message says what to do."""
