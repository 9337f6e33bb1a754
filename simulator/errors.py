"""The one error type for bad user input."""


class ScenarioError(ValueError):
    """Bad input: names the key, the value and the rule. The CLI turns it into exit status 2."""

    def __init__(self, key: str, value, rule: str):
        self.key, self.value, self.rule = key, value, rule
        super().__init__(f"{key} = {value!r}: {rule}")
