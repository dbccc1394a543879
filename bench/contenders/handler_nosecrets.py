"""A realistic Lambda handler module with no secrets: the floor the handler_* contenders are
measured against.

Powertools' ``Logger``, ``Metrics`` and REST event handler, and pydantic models validated by
Powertools' parser: about 200 ms of imports on this machine, more than the round trips of 20
secrets at 10 ms. Run as a script it prints ``0 -`` as bare.py does (nothing to check) and
ignores the environment the runner gives every contender (endpoint, credentials, references).
handler_bootstrap.py and handler_prefetch.py import it as their application, so all three
pay the same imports and build the same objects. Needs aws-lambda-powertools and pydantic.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from aws_lambda_powertools.event_handler.exceptions import BadRequestError
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import ValidationError, parse
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, Field

logger = Logger(service="orders")
metrics = Metrics(namespace="Bench", service="orders")
app = APIGatewayRestResolver()


class LineItem(BaseModel):
    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(gt=0, le=1000)
    unit_price: Decimal = Field(gt=0, max_digits=10, decimal_places=2)


class Address(BaseModel):
    line1: str
    city: str
    postcode: str = Field(pattern=r"^[A-Z0-9 -]{3,10}$")
    country: str = Field(min_length=2, max_length=2)


class Order(BaseModel):
    customer_id: str
    items: list[LineItem] = Field(min_length=1)
    shipping: Address
    note: str | None = None


@app.post("/orders")
def create_order() -> dict[str, Any]:
    try:
        order = parse(event=app.current_event.json_body, model=Order)
    except ValidationError:
        raise BadRequestError("invalid order") from None
    total = sum(item.unit_price * item.quantity for item in order.items)
    metrics.add_metric(name="OrderCreated", unit=MetricUnit.Count, value=1)
    logger.info("order accepted", extra={"items": len(order.items)})
    return {"customer_id": order.customer_id, "total": str(total)}


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)


if __name__ == "__main__":
    print("0 -")
