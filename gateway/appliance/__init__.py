"""The appliance around the edge service: update hooks, USB sticks, emergency export."""
