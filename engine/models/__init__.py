"""The model zoo: model specs, the catalogue (catalogue.json), the Hub download and its
conversion, the bounded cache of loaded generators (zoo), and the embedded 64 px model
(default_model/). Imports only engine.base and engine.gan."""
