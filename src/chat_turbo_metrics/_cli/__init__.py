"""The ``chat-turbo-metrics`` command's subcommands: config, doctor, rules, demo (dispatched by ``__main__``)."""
