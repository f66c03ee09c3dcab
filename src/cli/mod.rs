//! One file per subcommand: parse the flags, call the library, print. No model logic lives here.
