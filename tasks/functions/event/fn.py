# main(event): the event is the input parsed as JSON; whatever JSON can hold is returned.
def main(event):
    items = event.get("items", [])
    total = sum(item["price"] * item.get("qty", 1) for item in items)
    return {
        "order": event["order"],
        "customer": event["customer"].title(),
        "lines": len(items),
        "total": round(total, 2),
        "free_shipping": total >= 50,
    }
